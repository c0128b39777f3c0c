"""Where a model sits: the input device and the printed placement summary."""

from conftest import build_tiny
from hywia.models.placement import describe_placement, input_device


def test_single_device_model():
    model = build_tiny("llama-gqa")
    assert str(input_device(model)) == "cpu" and describe_placement(model) == "cpu"


def test_spread_model_summary():
    model = build_tiny("llama-gqa")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1,
                           "lm_head": 1}
    assert describe_placement(model) == "spread over cuda:0 (2 modules), cuda:1 (3 modules)"
    model.hf_device_map = {"": "cpu"}
    assert describe_placement(model) == "cpu"
