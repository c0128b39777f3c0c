"""Wanda-sp and FLAP: formulas, bias compensation, the pruned-model invariant, save and reload."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_models import KINDS, build_tiny, token_ids
from hywia import PruneConfig, load_model, load_pruned, prune, save_pruned
from hywia.models.adapters import OUTPUT_BIAS_KEY, get_adapter
from hywia.allocate import GLOBAL_SCORE, UnitBudget, allocate_global
from hywia.models.groups import ATTN, MLP
from hywia.importance import METHODS
from hywia.importance.activation import (
    compensation_bias,
    flap_importance,
    fluctuation_columns,
    standardize,
    wanda_sp_importance,
)

CALIB = dict(rows=6, length=16, seed=1)


def calib_ids():
    return token_ids(CALIB["rows"], CALIB["length"], CALIB["seed"])


def probe_ids():
    return token_ids(2, 12, seed=2)


def test_methods_are_registered():
    assert METHODS["wanda-sp"].needs == "activations" and METHODS["flap"].needs == "activations"
    assert METHODS["flap"].default_allocation == GLOBAL_SCORE
    assert METHODS["wanda-sp"].default_allocation == "uniform"


def test_wanda_sp_is_mean_over_rows_of_weight_times_input_norm():
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(5, 12, generator=g), torch.randn(30, 12, generator=g)
    norm = x.norm(dim=0)
    per_weight = weight.abs() * norm[None, :]  # Wanda: |W_ij| * ||X_j||
    expected = torch.stack([per_weight[:, 4 * u : 4 * u + 4].mean(0).sum() for u in range(3)])
    torch.testing.assert_close(wanda_sp_importance(weight, norm, 3), expected)


def test_flap_scores():
    g = torch.Generator().manual_seed(1)
    weight, x = torch.randn(5, 12, generator=g), torch.randn(30, 12, generator=g)
    variance = x.var(0)
    columns = fluctuation_columns(weight, variance)
    torch.testing.assert_close(columns, torch.stack([variance[j] * weight[:, j].pow(2).sum() for j in range(12)]))
    z = standardize(columns)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    torch.testing.assert_close(flap_importance(weight, variance, 12, attention=False), z)
    heads = flap_importance(weight, variance, 3, attention=True)
    torch.testing.assert_close(heads, standardize(columns.pow(2)).reshape(3, 4).mean(1))
    assert torch.equal(standardize(torch.ones(4)), torch.zeros(4))


def test_compensation_restores_output_when_removed_inputs_are_constant():
    g = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(10, 6)
    removed, kept = torch.tensor([1, 4, 5, 9]), torch.tensor([0, 2, 3, 6, 7, 8])
    x = torch.randn(20, 10, generator=g)
    x[:, removed] = torch.randn(len(removed), generator=g)  # constant over tokens
    mean = x.mean(0)
    with torch.no_grad():
        dense = linear(x)
        pruned = x[:, kept] @ linear.weight[:, kept].T + linear.bias + compensation_bias(linear.weight, mean, removed)
    torch.testing.assert_close(pruned, dense, atol=1e-5, rtol=1e-5)


def test_global_score_ranks_by_score_not_per_parameter():
    budgets = [UnitBudget((0, ATTN), 2, 100, 1, 1), UnitBudget((0, MLP), 4, 10, 1, 1)]
    scores = {(0, ATTN): torch.tensor([-1.0, 2.0]), (0, MLP): torch.tensor([-0.5, 0.1, 0.2, 0.3])}
    by_score = allocate_global(budgets, scores, 100 / 1000, 1000, per_parameter=False)
    assert by_score.keep_counts == {(0, ATTN): 1, (0, MLP): 4}  # the head scores lowest
    per_param = allocate_global(budgets, scores, 100 / 1000, 1000)
    assert per_param.keep_counts[(0, MLP)] < 4  # -0.5 / 10 < -1.0 / 100 per parameter


def dense_reference(kind, keep, compensate=True):
    """The dense model with the removed units' o_proj / down_proj input columns zeroed, plus (FLAP)
    W[:, removed] @ mean_x[removed] added to that projection's output -- means from a hooked
    whole-model forward over the calibration tokens, independent of the layer-wise engine."""
    model = build_tiny(kind)
    adapter = get_adapter(model)
    captured = {}
    handles = []
    for (layer, unit_kind) in keep:
        path = adapter.unit_output_module(layer, unit_kind)
        captured[path] = []
        handles.append(model.get_submodule(path).register_forward_pre_hook(
            lambda m, args, _p=path: captured[_p].append(args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        model(calib_ids())
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        for (layer, unit_kind), kept in keep.items():
            group_set = next(gs for gs in adapter.group_sets(layer) if gs.kind == unit_kind)
            removed = torch.tensor(sorted(set(range(group_set.num_units)) - set(kept)), dtype=torch.long)
            if len(removed) == 0:
                continue
            out = model.get_submodule(adapter.unit_output_module(layer, unit_kind))
            size = out.in_features // group_set.num_units
            cols = (removed[:, None] * size + torch.arange(size)).reshape(-1)
            mean = torch.cat(captured[adapter.unit_output_module(layer, unit_kind)]).double().mean(0).float()
            term = out.weight[:, cols] @ mean[cols]
            out.weight[:, cols] = 0
            if compensate:
                if out.bias is None:
                    out.bias = torch.nn.Parameter(torch.zeros(out.out_features))
                out.bias += term
    return model


def kept_units(report):
    return {(entry["layer"], kind): entry[kind]["kept"] for entry in report["layers"] for kind in (ATTN, MLP)
            if kind in entry}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("allocation", ["uniform", GLOBAL_SCORE])
def test_flap_pruned_equals_masked_dense_plus_compensation(kind, allocation):
    model = build_tiny(kind)
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.25, method="flap", allocation=allocation, progress=False),
                   calibration_ids=calib_ids())
    keep = kept_units(result.report)
    removed_any = {k for k, v in keep.items()
                   if len(v) < len(result.report["layers"][k[0]][k[1]]["scores"])}
    assert removed_any, "nothing was pruned"
    reference = dense_reference(kind, keep)
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids()).logits, reference(probe_ids()).logits, atol=1e-4, rtol=1e-4)
    assert result.report["method_details"]["bias_parameters_added"] > 0
    assert result.report["parameters"]["after"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_flap_without_compensation_equals_masked_dense():
    model = build_tiny("llama-gqa")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.25, method="flap", progress=False,
                                            method_options={"compensate": False}), calibration_ids=calib_ids())
    reference = dense_reference("llama-gqa", kept_units(result.report), compensate=False)
    assert all(m.bias is None for name, m in model.named_modules() if name.endswith(("o_proj", "down_proj")))
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids()).logits, reference(probe_ids()).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama-mha", "qwen2"])
def test_wanda_sp_keeps_highest_scores_uniformly(kind):
    model = build_tiny(kind)
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.2, method="wanda-sp", progress=False), calibration_ids=calib_ids())
    assert result.report["uniform_widths"]
    for entry in result.report["layers"]:
        for unit_kind in (ATTN, MLP):
            scores = torch.tensor(entry[unit_kind]["scores"])
            kept = entry[unit_kind]["kept"]
            removed = entry[unit_kind]["removed"]
            if removed:
                assert scores[kept].min() >= scores[removed].max()
    p = result.report["parameters"]
    assert abs(p["achieved_ratio"] - 0.2) < 0.05
    assert all(m.bias is None for name, m in model.named_modules() if name.endswith("down_proj"))


@pytest.mark.parametrize("kind,allocation,stock", [
    ("llama-mha", "uniform", True),        # attention_bias / mlp_bias flags: plain from_pretrained
    ("llama-gqa", GLOBAL_SCORE, False),    # per-layer widths: load_pruned
    ("qwen2", "uniform", False),           # no flag for o_proj / down_proj biases: hywia_output_biases
    ("mistral", GLOBAL_SCORE, False),
    ("qwen3", "uniform", False),           # attention_bias flag for o_proj, hywia_output_biases for down_proj
    ("gemma3", GLOBAL_SCORE, False),
])
def test_saved_flap_model_reloads_with_same_logits(tmp_path, kind, allocation, stock):
    model = build_tiny(kind)
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.25, method="flap", allocation=allocation, progress=False),
                   calibration_ids=calib_ids())
    out = save_pruned(model, None, tmp_path / "pruned", result.report)
    with torch.no_grad():
        expected = model(probe_ids()).logits
        for reloaded in [load_pruned(out)] + ([AutoModelForCausalLM.from_pretrained(out)] if stock else []):
            torch.testing.assert_close(reloaded.eval()(probe_ids()).logits, expected, atol=1e-5, rtol=1e-5)
            assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    config = model.config
    if stock:
        assert config.attention_bias and config.mlp_bias and getattr(config, OUTPUT_BIAS_KEY, None) is None
    elif kind != "llama-gqa":
        assert getattr(config, OUTPUT_BIAS_KEY)


def test_load_model_routes_recorded_biases_to_load_pruned(tmp_path):
    model = build_tiny("qwen2")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.25, method="flap", allocation="uniform", progress=False),
                   calibration_ids=calib_ids())
    from tiny_models import tiny_tokenizer

    out = save_pruned(model, tiny_tokenizer(), tmp_path / "pruned", result.report)
    loaded = load_model(str(out), dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(probe_ids()).logits, model(probe_ids()).logits, atol=1e-5, rtol=1e-5)
