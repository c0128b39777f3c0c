"""The reconstruction stage end to end on tiny models: surgery stays exact, errors shrink, limits, reload."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import count_unique_storage, tiny_text
from tiny_models import KINDS, build_tiny, tiny_tokenizer, token_ids
from hywia import PruneConfig, load_pruned, prune, save_pruned
from hywia.cli import main
from hywia.models.adapters import get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.reconstruct import reconstruct, unit_columns


def calib_ids():
    return token_ids(6, 16, seed=1)


def probe_ids():
    return token_ids(2, 12, seed=2)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def kept_units(report) -> dict:
    return {(entry["layer"], kind): torch.tensor(entry[kind]["kept"]) for entry in report["layers"]
            for kind in (ATTN, MLP) if kind in entry}


def num_units(adapter, layer, kind) -> int:
    return next(gs for gs in adapter.group_sets(layer) if gs.kind == kind).num_units


def columns(adapter, layer, kind, kept):
    """Kept and removed input columns of the output projection (adapter of the DENSE model)."""
    units = num_units(adapter, layer, kind)
    size = adapter.model.get_submodule(adapter.unit_output_module(layer, kind)).in_features // units
    removed = torch.tensor(sorted(set(range(units)) - set(kept.tolist())), dtype=torch.long)
    return unit_columns(kept, size), unit_columns(removed, size)


def dense_shaped(dense, pruned, keep):
    """``dense`` (a copy) with the pruned model's o_proj / down_proj written into the kept columns, the
    removed columns zeroed and the pruned model's output biases: what reconstruction + surgery must equal."""
    adapter, pruned_adapter = get_adapter(dense), get_adapter(pruned)
    with torch.no_grad():
        for (layer, kind), kept in keep.items():
            out = dense.get_submodule(adapter.unit_output_module(layer, kind))
            small = pruned.get_submodule(pruned_adapter.unit_output_module(layer, kind))
            kept_cols, _ = columns(adapter, layer, kind, kept)
            weight = torch.zeros_like(out.weight)
            weight[:, kept_cols] = small.weight
            out.weight.copy_(weight)
            if small.bias is not None:
                out.bias = torch.nn.Parameter(small.bias.detach().clone())
    return dense


def output_modules(model):
    return {name: module for name, module in model.named_modules() if name.endswith(("o_proj", "down_proj"))}


@pytest.mark.parametrize("kind", KINDS)
def test_surgery_is_exact_after_reconstruction(kind):
    """(a) pruned model == dense-shaped copy with the refitted columns written in and the removed ones zeroed."""
    model = build_tiny(kind)
    original = copy.deepcopy(model)
    result = prune(model, None, PruneConfig(ratio=0.3, method="random", reconstruct=True, progress=False),
                   calibration_ids=calib_ids())
    keep = kept_units(result.report)
    adapter = get_adapter(original)
    changed = 0
    for (layer, unit_kind), kept in keep.items():
        kept_cols, removed_cols = columns(adapter, layer, unit_kind, kept)
        if len(removed_cols):
            before = original.get_submodule(adapter.unit_output_module(layer, unit_kind)).weight[:, kept_cols]
            after = model.get_submodule(adapter.unit_output_module(layer, unit_kind)).weight
            changed += not torch.allclose(before, after)
    assert changed > 0, "reconstruction changed nothing"
    reference = dense_shaped(copy.deepcopy(original), model, keep)
    torch.testing.assert_close(logits(model, probe_ids()), logits(reference, probe_ids()), atol=1e-5, rtol=1e-5)
    rec = result.report["reconstruction"]
    assert rec["intercepts"] == 0 and rec["bias_parameters_added"] == 0  # no new parameters by default
    assert result.report["parameters"]["after"] == count_unique_storage(model)


def test_surgery_is_exact_with_per_layer_widths_and_a_gradient_method():
    model = build_tiny("llama-gqa")
    original = copy.deepcopy(model)
    result = prune(model, None, PruneConfig(ratio=0.3, method="element1", allocation="global", reconstruct=True,
                                            progress=False), calibration_ids=calib_ids())
    assert not result.report["uniform_widths"]
    reference = dense_shaped(copy.deepcopy(original), model, kept_units(result.report))
    torch.testing.assert_close(logits(model, probe_ids()), logits(reference, probe_ids()), atol=1e-5, rtol=1e-5)


def capture_inputs(model, paths, ids):
    found = {path: [] for path in paths}
    handles = [model.get_submodule(path).register_forward_pre_hook(
        lambda _m, args, _p=path: found[_p].append(args[0].reshape(-1, args[0].shape[-1]).double()))
        for path in paths]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return {path: torch.cat(values) for path, values in found.items()}


def layer_outputs(model, ids):
    outputs = []
    handles = [layer.register_forward_hook(lambda _m, _a, out: outputs.append((out[0] if isinstance(out, tuple)
                                                                                else out).double()))
               for layer in get_adapter(model).decoder_layers()]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2"])
def test_reconstruction_lowers_the_output_error_of_every_projection(kind):
    """(b) on the pruned model's own calibration inputs X, ||W_S' X_S + b - W X|| <= ||W_S X_S - W X||,
    computed here with hooks, and equal to what the report says."""
    model = build_tiny(kind)
    original = copy.deepcopy(model)
    result = prune(model, None, PruneConfig(ratio=0.3, method="element1", reconstruct=True, progress=False),
                   calibration_ids=calib_ids())
    keep = kept_units(result.report)
    reference = dense_shaped(copy.deepcopy(original), model, keep)
    adapter = get_adapter(original)
    paths = {key: adapter.unit_output_module(*key) for key in keep}
    inputs = capture_inputs(reference, paths.values(), calib_ids())  # full width: removed units still computed
    facts = {(f["layer"], f["kind"]): f for f in result.report["reconstruction"]["per_projection"]}
    checked = 0
    for key, path in paths.items():
        kept_cols, removed_cols = columns(adapter, *key, keep[key])
        if not len(removed_cols):
            continue
        x = inputs[path]
        dense = original.get_submodule(path)
        refit = reference.get_submodule(path)
        w, w_new = dense.weight.double(), refit.weight.double()
        b = torch.zeros(w.shape[0], dtype=torch.float64)
        if refit.bias is not None:
            b = refit.bias.double() - (dense.bias.double() if dense.bias is not None else 0)
        target = x @ w.T
        before = (x[:, removed_cols] @ w[:, removed_cols].T).norm() / target.norm()
        after = (x @ w_new.T + b - target).norm() / target.norm()
        assert after <= before
        assert facts[key]["error_before"] == pytest.approx(before.item(), rel=1e-3)
        assert facts[key]["error_after"] == pytest.approx(after.item(), rel=1e-3)
        assert facts[key]["tokens"] == calib_ids().numel()
        checked += 1
    assert checked >= 4
    # and the whole pruned model tracks the dense one more closely, layer after layer
    plain = build_tiny(kind)
    prune(plain, None, PruneConfig(ratio=0.3, method="element1", reconstruct=False, progress=False), calibration_ids=calib_ids())
    dense_out = layer_outputs(original, calib_ids())
    for d, rec, raw in zip(dense_out, layer_outputs(model, calib_ids()), layer_outputs(plain, calib_ids())):
        assert (rec - d).norm() <= (raw - d).norm()


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma2"])
def test_huge_damping_equals_no_reconstruction(kind):
    """(c) lambda -> inf leaves W_S unchanged: the same logits as plain removal."""
    plain = build_tiny(kind)
    prune(plain, None, PruneConfig(ratio=0.3, method="element1", reconstruct=False, progress=False), calibration_ids=calib_ids())
    for damping in (1e12, float("inf")):
        model = build_tiny(kind)
        config = PruneConfig(ratio=0.3, method="element1", reconstruct=True, reconstruct_damping=damping,
                             progress=False)
        result = prune(model, None, config, calibration_ids=calib_ids())
        torch.testing.assert_close(logits(model, probe_ids()), logits(plain, probe_ids()), atol=1e-5, rtol=1e-5)
        rec = result.report["reconstruction"]
        assert rec["mean_error_after"] == pytest.approx(rec["mean_error_before"], rel=1e-6)


@pytest.mark.parametrize("kind,method,allocation,stock", [
    ("llama-gqa", "element1", "uniform", True),
    ("mistral", "random", "global", False),
    ("llama-mha", "flap", "uniform", True),    # intercepts through the attention_bias / mlp_bias flags
    ("qwen2", "flap", "global-score", False),  # intercepts recorded under hywia_output_biases
])
def test_save_and_reload_gives_identical_logits(tmp_path, kind, method, allocation, stock):
    """(d) the saved model reloads (per report["reload_with"]) with identical logits and parameter count."""
    model = build_tiny(kind, attn=None)  # the attention implementation a reloaded model gets
    result = prune(model, None, PruneConfig(ratio=0.3, method=method, allocation=allocation, reconstruct=True,
                                            progress=False), calibration_ids=calib_ids())
    report = result.report
    assert report["stock_config"] == stock
    out = save_pruned(model, None, tmp_path / "out", report)
    reloaded = (AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
                if report["reload_with"] == "AutoModelForCausalLM.from_pretrained" else load_pruned(out))
    torch.testing.assert_close(logits(reloaded, probe_ids()), logits(model, probe_ids()), atol=0, rtol=0)
    saved = json.loads((out / "hywia_report.json").read_text())
    assert count_unique_storage(reloaded) == saved["parameters"]["after"] == count_unique_storage(model)
    assert saved["reconstruction"]["projections_refitted"] > 0
    assert (saved["reconstruction"]["intercepts"] > 0) == (method == "flap")


def sequential_flap(model, keep, ids):
    """FLAP's compensation measured on the pruned model itself: for each layer in order (attention,
    then MLP) zero the removed columns and add W_R mean(X_R) to the bias, with means taken from a
    whole-model forward of the model as modified so far. Independent of the reconstruction engine."""
    adapter = get_adapter(model)
    order = sorted(keep, key=lambda key: (key[0], key[1] != ATTN))
    for layer, kind in order:
        path = adapter.unit_output_module(layer, kind)
        kept_cols, removed_cols = columns(adapter, layer, kind, keep[(layer, kind)])
        if not len(removed_cols):
            continue
        mean = capture_inputs(model, [path], ids)[path].mean(0).float()
        out = model.get_submodule(path)
        with torch.no_grad():
            term = out.weight[:, removed_cols] @ mean[removed_cols]
            out.weight[:, removed_cols] = 0
            if out.bias is None:
                out.bias = torch.nn.Parameter(torch.zeros(out.out_features))
            out.bias += term
    return model


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen3"])
def test_flap_bias_is_replaced_not_doubled(kind):
    """(e) with FLAP the intercept replaces FLAP's bias: at huge damping it IS FLAP's compensation (with the
    means of the pruned model's inputs), the same biases and parameter count as FLAP alone."""
    alone = build_tiny(kind)
    flap = prune(alone, None, PruneConfig(ratio=0.3, method="flap", reconstruct=False, progress=False), calibration_ids=calib_ids())
    model = build_tiny(kind)
    original = copy.deepcopy(model)
    result = prune(model, None, PruneConfig(ratio=0.3, method="flap", reconstruct=True, reconstruct_damping=1e12,
                                            progress=False), calibration_ids=calib_ids())
    keep = kept_units(result.report)
    assert {k: v.tolist() for k, v in keep.items()} == {k: v.tolist() for k, v in kept_units(flap.report).items()}
    details = result.report["method_details"]
    assert details["bias_compensation"] == "reconstruction intercept" and "bias_parameters_added" not in details
    added = result.report["reconstruction"]["bias_parameters_added"]
    assert added == flap.report["method_details"]["bias_parameters_added"] > 0
    assert result.report["parameters"]["after"] == flap.report["parameters"]["after"] == count_unique_storage(model)
    # the first pruned projection sees the same inputs in both (nothing before it changed): the same bias, not twice it
    adapter = get_adapter(model)
    dense_adapter = get_adapter(original)
    pruned_keys = sorted(key for key in keep if len(columns(dense_adapter, *key, keep[key])[1]))
    path = adapter.unit_output_module(*pruned_keys[0])
    bias, flap_bias = model.get_submodule(path).bias, alone.get_submodule(path).bias
    assert flap_bias.abs().max() > 0
    torch.testing.assert_close(bias, flap_bias, atol=1e-3 * flap_bias.abs().max().item(), rtol=1e-4)
    reference = sequential_flap(original, keep, calib_ids())
    torch.testing.assert_close(logits(model, probe_ids()), logits(reference, probe_ids()), atol=1e-4, rtol=1e-4)


def test_flap_without_compensation_fits_no_intercept():
    model = build_tiny("llama-gqa")
    result = prune(model, None, PruneConfig(ratio=0.3, method="flap", reconstruct=True, progress=False,
                                            method_options={"compensate": False}), calibration_ids=calib_ids())
    assert result.report["reconstruction"]["intercepts"] == 0
    assert all(m.bias is None for m in output_modules(model).values())


def test_existing_output_bias_gets_an_intercept_without_new_parameters():
    from transformers import LlamaConfig

    from tiny_models import COMMON, build_from_config

    config = LlamaConfig(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True, **COMMON)
    model = build_from_config(config)
    before = count_unique_storage(model)
    result = prune(model, None, PruneConfig(ratio=0.3, method="element1", reconstruct=True, progress=False),
                   calibration_ids=calib_ids())
    rec = result.report["reconstruction"]
    assert rec["intercepts"] == rec["projections_refitted"] > 0 and rec["bias_parameters_added"] == 0
    assert result.report["parameters"]["removed"] == before - count_unique_storage(model)


def test_data_free_method_gets_calibration_samples(tmp_path):
    """(e) random needs no data, reconstruction does: samples are drawn from the calibration text."""
    text = tmp_path / "calib.txt"
    text.write_text(tiny_text())
    base = dict(ratio=0.3, method="random", reconstruct=True, progress=False, calibration=str(text),
                num_samples=3, seq_len=16)
    result = prune(build_tiny("qwen2"), tiny_tokenizer(), PruneConfig(**base))
    assert result.report["reconstruction"]["samples"] == [3, 16]
    assert result.report["reconstruction"]["tokens"] == 48
    result = prune(build_tiny("qwen2"), tiny_tokenizer(),
                   PruneConfig(**base, reconstruct_samples=5, reconstruct_seq_len=8))
    assert result.report["reconstruction"]["samples"] == [5, 8]
    result = prune(build_tiny("qwen2"), None, PruneConfig(**base), reconstruction_ids=token_ids(2, 10, seed=3))
    assert result.report["reconstruction"]["samples"] == [2, 10]
    result = prune(build_tiny("qwen2"), None, PruneConfig(**base), calibration_ids=calib_ids())
    assert result.report["reconstruction"]["samples"] == [6, 16]
    assert prune(build_tiny("qwen2"), None, PruneConfig(**{**base, "reconstruct": False}))\
        .report["reconstruction"] is None


def test_only_listed_layers_and_kinds_change():
    model = build_tiny("llama-gqa")
    original = copy.deepcopy(model)
    adapter = get_adapter(model)
    units = num_units(adapter, 1, MLP)
    keep = {(1, MLP): torch.arange(0, units, 2)}
    rebuilt = reconstruct(model, adapter, keep, calib_ids(), damping=0.1, batch_size=4, progress=False)
    assert list(rebuilt.facts) == [(1, MLP)] and not rebuilt.bias_terms
    for name, module in output_modules(model).items():
        same = torch.equal(module.weight, original.get_submodule(name).weight)
        assert same == (name != "model.layers.1.mlp.down_proj"), name
    _, removed_cols = columns(adapter, 1, MLP, keep[(1, MLP)])
    assert model.get_submodule("model.layers.1.mlp.down_proj").weight[:, removed_cols].abs().max() == 0
    # every other parameter is untouched
    for (name, p), (_, q) in zip(model.named_parameters(), original.named_parameters()):
        assert name.endswith("down_proj.weight") or torch.equal(p, q), name


def test_layer_range_leaves_other_layers_alone():
    model = build_tiny("mistral")
    original = copy.deepcopy(model)
    prune(model, None, PruneConfig(ratio=0.1, method="element1", layers="1:2", reconstruct=True, progress=False),
          calibration_ids=calib_ids())
    for name, module in output_modules(model).items():
        if not name.startswith("model.layers.1."):
            assert torch.equal(module.weight, original.get_submodule(name).weight), name


def test_bad_settings_are_refused():
    from hywia import HywiaError

    for bad in (dict(reconstruct_damping=-1.0), dict(reconstruct_samples=0), dict(reconstruct_seq_len=1)):
        with pytest.raises(HywiaError):
            PruneConfig(ratio=0.2, method="random", reconstruct=True, **bad).validate()


def test_cli_flags(capsys, tmp_path, tiny_model_dir):
    text = tmp_path / "calib.txt"
    text.write_text(tiny_text())
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l2", "--calib", str(text),
                 "--calib-len", "16", "--reconstruct", "--reconstruct-damping", "0.5", "--reconstruct-samples", "3",
                 "--reconstruct-len", "12", "--out", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0 and "reconstruction:" in stdout
    report = json.loads((out / "hywia_report.json").read_text())
    assert report["recipe"]["reconstruct"] and report["recipe"]["reconstruct_damping"] == 0.5
    assert report["reconstruction"]["samples"] == [3, 12]
    code = main(["prune", "--model", str(tiny_model_dir), "--ratio", "0.2", "--method", "l2", "--no-reconstruct",
                 "--quiet"])
    assert code == 0 and "reconstruction:" not in capsys.readouterr().out
