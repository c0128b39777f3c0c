"""prune() end to end on tiny models: the report is exact, the output reloads with identical logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig

from conftest import build_tiny, count_unique_storage
from hywia import HywiaError, PruneConfig, load_model, load_pruned, prune, save_pruned
from hywia.models.adapters import get_adapter
from hywia.models.io import REPORT_NAME

GRADIENT_METHODS = ["element1", "element2", "vector"]


@pytest.mark.parametrize("method", ["random", "l1", "l2", *GRADIENT_METHODS])
def test_report_matches_model(tiny_kind, calib_ids, method):
    model = build_tiny(tiny_kind)
    before = count_unique_storage(model)
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.25, method=method, progress=False), calibration_ids=calib_ids)
    params = result.report["parameters"]
    assert params["before"] == before and params["after"] == count_unique_storage(model)
    assert abs(params["achieved_ratio"] - 0.25) < 0.05
    for entry in result.report["layers"]:
        assert len(entry["attn"]["kept"]) == entry["after"]["num_kv_heads"]
        assert len(entry["mlp"]["kept"]) == entry["after"]["intermediate_size"]
        assert not set(entry["mlp"]["kept"]) & set(entry["mlp"]["removed"])


def test_gradient_methods_keep_the_highest_scores(calib_ids):
    model = build_tiny("llama-gqa")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, method="element2", progress=False), calibration_ids=calib_ids)
    for entry in result.report["layers"]:
        scores = torch.tensor(entry["mlp"]["scores"])
        kept = entry["mlp"]["kept"]
        assert scores[kept].min() >= scores[entry["mlp"]["removed"]].max()


def test_deterministic_under_seed(calib_ids):
    reports = []
    for _ in range(2):
        model = build_tiny("mistral")
        reports.append(prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, method="element1", progress=False),
                             calibration_ids=calib_ids).report)
    assert [e["mlp"]["kept"] for e in reports[0]["layers"]] == [e["mlp"]["kept"] for e in reports[1]["layers"]]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_uniform_save_reloads_with_from_pretrained(tmp_path, calib_ids, probe_ids):
    model = build_tiny("qwen2")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, method="element1", progress=False), calibration_ids=calib_ids)
    assert result.report["stock_config"]
    out = save_pruned(model, None, tmp_path / "out", result.report)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(reloaded, probe_ids), _logits(model, probe_ids), atol=0, rtol=0)
    assert count_unique_storage(reloaded) == json.loads((out / REPORT_NAME).read_text())["parameters"]["after"]


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_every_architecture_prunes_with_hywia_and_reloads(tmp_path, calib_ids, probe_ids, tiny_kind, allocation):
    model = build_tiny(tiny_kind)
    config = PruneConfig(reconstruct=False, ratio=0.3, method="hywia", allocation=allocation, progress=False,
                         method_options={"steps": 3})
    result = prune(model, None, config, calibration_ids=calib_ids)
    out = save_pruned(model, None, tmp_path / "out", result.report)
    reloaded = (AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval() if result.report["stock_config"]
                else load_pruned(out))
    torch.testing.assert_close(_logits(reloaded, probe_ids), _logits(model, probe_ids), atol=0, rtol=0)
    assert count_unique_storage(reloaded) == result.report["parameters"]["after"] < result.report["parameters"]["before"]
    assert result.report["stock_config"] == (allocation == "uniform")


@pytest.mark.parametrize("kind,config", [
    ("llama-gqa", dict(allocation="global")),
    ("llama-mha", dict(layers="1:2")),
])
def test_non_uniform_save_reloads_with_load_pruned(tmp_path, calib_ids, probe_ids, kind, config):
    model = build_tiny(kind)
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.2, method="element1", progress=False, **config),
                   calibration_ids=calib_ids)
    assert not result.report["stock_config"]
    out = save_pruned(model, None, tmp_path / "out", result.report)
    reloaded = load_pruned(out)
    torch.testing.assert_close(_logits(reloaded, probe_ids), _logits(model, probe_ids), atol=0, rtol=0)
    assert count_unique_storage(reloaded) == result.report["parameters"]["after"]


def test_head_count_that_stock_config_rejects_falls_back_to_load_pruned(tmp_path, probe_ids):
    """hidden 32 with 3 heads fails transformers' config validation: widths go per layer instead."""
    from hywia.models.surgery import apply_keep

    model = build_tiny("llama-mha")
    adapter = get_adapter(model)
    apply_keep(model, adapter, {(layer, "attn"): torch.tensor([0, 1, 3]) for layer in range(3)})
    assert hasattr(model.config, "hywia_layer_widths")
    out = save_pruned(model, None, tmp_path / "out", {})
    torch.testing.assert_close(_logits(load_pruned(out), probe_ids), _logits(model, probe_ids), atol=0, rtol=0)


def test_load_model_reads_a_saved_folder(tmp_path, calib_ids, probe_ids):
    from conftest import tiny_tokenizer

    model = build_tiny("llama-gqa")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.2, method="l2", allocation="global", progress=False))
    out = save_pruned(model, tiny_tokenizer(), tmp_path / "out", result.report)
    loaded = load_model(str(out), dtype="float32")
    torch.testing.assert_close(_logits(loaded.model, probe_ids), _logits(model, probe_ids), atol=0, rtol=0)


def test_unsupported_architecture_names_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(HywiaError, match="unsupported architecture GPT2LMHeadModel.*llama, mistral, qwen2"):
        get_adapter(model)


def test_impossible_gqa_split():
    config = LlamaConfig(vocab_size=32, hidden_size=24, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=3, head_dim=6)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(HywiaError, match="cannot be split evenly"):
        get_adapter(model)


def test_round_to_that_cannot_fit(calib_ids):
    with pytest.raises(HywiaError, match="--round-to 64 cannot fit"):
        prune(build_tiny("llama-mha"), None, PruneConfig(reconstruct=False, ratio=0.2, method="l2", round_to=64, progress=False))


def test_nan_gradients_are_reported(calib_ids):
    model = build_tiny("llama-mha")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(HywiaError, match="NaN"):
        prune(model, None, PruneConfig(reconstruct=False, ratio=0.2, method="element1", progress=False), calibration_ids=calib_ids)


def test_ratio_zero_is_refused():
    with pytest.raises(HywiaError, match="--ratio"):
        prune(build_tiny("llama-mha"), None, PruneConfig(reconstruct=False, ratio=0.0, method="l2"))


def test_ratio_of_the_non_embedding_parameters(calib_ids):
    """--ratio-base non-embedding: the removed count is the ratio of the parameters outside the
    embedding and LM head (counted here from the named modules, independently of the pipeline)."""
    model = build_tiny("llama-mha")
    total = sum(p.numel() for p in model.parameters())  # untied in this config
    outside = total - model.model.embed_tokens.weight.numel() - model.lm_head.weight.numel()
    report = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, ratio_base="non-embedding", method="l2", progress=False)).report
    removed = report["parameters"]["removed"]
    assert abs(removed / outside - 0.3) < 0.05
    assert report["parameters"]["achieved_ratio_non_embedding"] == pytest.approx(removed / outside)
    assert report["parameters"]["achieved_ratio"] == pytest.approx(removed / total)
    with pytest.raises(HywiaError, match="ratio-base"):
        prune(build_tiny("llama-mha"), None, PruneConfig(reconstruct=False, ratio=0.3, ratio_base="layers", method="l2", progress=False))


def test_round_to_auto_is_one_on_cpu_and_recorded(calib_ids):
    """--round-to auto (the default) keeps exact widths on CPU; a GPU step is chosen by allocate.hardware_round_to
    (tested in test_round_to.py); what was used is in the report."""
    model = build_tiny("llama-gqa")
    report = prune(model, None, PruneConfig(ratio=0.3, method="l2", reconstruct=False, progress=False),
                   calibration_ids=calib_ids).report
    assert report["parameters"]["round_to"] == 1 and report["parameters"]["round_to_note"] is None
    with pytest.raises(HywiaError, match="--round-to must be a positive integer or auto"):
        prune(build_tiny("llama-gqa"), None, PruneConfig(ratio=0.3, method="l2", round_to="eight", progress=False),
              calibration_ids=calib_ids)


def test_report_times_every_stage(calib_ids):
    model = build_tiny("llama-gqa")
    report = prune(model, None, PruneConfig(ratio=0.3, method="element1", progress=False), calibration_ids=calib_ids).report
    stages = report["seconds_per_stage"]
    assert set(stages) == {"setup", "scoring", "reconstruction", "surgery"}
    assert all(value >= 0 for value in stages.values()) and sum(stages.values()) <= report["seconds"] + 0.01


@pytest.mark.parametrize("layers,expected,floor", [("1:2", "uniform", 0.0), (None, "global", 0.1), ("0:2", "global", 0.1)])
def test_edges_allocation_depends_on_whether_the_first_or_last_layer_is_pruned(calib_ids, layers, expected, floor):
    model = build_tiny("llama-gqa")  # 3 layers
    report = prune(model, None, PruneConfig(ratio=0.1, method="l2", allocation="edges", layers=layers, reconstruct=False,
                                            progress=False), calibration_ids=calib_ids).report
    assert report["recipe"]["allocation"] == expected and report["recipe"]["min_width"] == floor
    assert ("uniform" if expected == "uniform" else "global") in report["parameters"]["allocation_choice"]
    if expected == "uniform":
        assert len({len(e["mlp"]["kept"]) for e in report["layers"] if "mlp" in e}) == 1


def test_edges_keeps_an_explicit_floor(calib_ids):
    report = prune(build_tiny("llama-gqa"), None, PruneConfig(ratio=0.1, method="l2", allocation="edges", min_width=0.3,
                                                              reconstruct=False, progress=False),
                   calibration_ids=calib_ids).report
    assert report["recipe"]["allocation"] == "global" and report["recipe"]["min_width"] == 0.3
