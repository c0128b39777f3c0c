"""Where a model sits: the input device and the printed placement summary."""

import torch

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


def test_pruning_attention_leaves_cpu_alone_and_keeps_cudnn_out_on_cuda():
    """On CUDA the pruning passes' SDPA runs flash / memory-efficient / math kernels (not cuDNN's, whose plans
    are built on the CPU per shape); the global backend flags come back afterwards; on the CPU nothing changes."""
    from hywia.models.placement import pruning_attention

    flags = (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.flash_sdp_enabled,
             torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.math_sdp_enabled)
    before = [flag() for flag in flags]
    with pruning_attention("cpu"):
        assert [flag() for flag in flags] == before
    with pruning_attention(torch.device("cuda", 0)):
        assert [flag() for flag in flags] == [False, True, True, True]
    assert [flag() for flag in flags] == before
