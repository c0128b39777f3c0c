"""HyWIA's fusion: a pure, tested module; and the whole method end to end on tiny models."""

import pytest
import torch

from conftest import build_tiny
from hywia import HywiaError, PruneConfig, prune
from hywia.models.adapters import get_adapter
from hywia.importance.hywia.fusion import (
    CONTEXT_NAMES,
    KEY_NAMES,
    AttentionFusion,
    blend_inputs,
    fuse,
    keep_threshold,
    normalise,
    rank_agreement,
    soft_mask,
)
from hywia.importance.taylor import groupwise_importance
from tiny_models import zero_removed


def scores(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.01


def trained_like(seed):
    """A fusion with every parameter non-zero, as after some training."""
    fusion = AttentionFusion(seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in fusion.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return fusion


def test_blend_input_shapes():
    fine, coarse = normalise(scores(12, 0)), normalise(scores(12, 1))
    context, keys = blend_inputs(fine, coarse, depth=0.5, is_mlp=True, keep=8)
    assert context.shape == (12, len(CONTEXT_NAMES)) and keys.shape == (12, 2, len(KEY_NAMES))
    fusion = AttentionFusion(seed=0)
    per_group, per_layer = fusion(context, keys), fusion(context.mean(0), keys.mean(0))
    assert per_group.shape == (12, 2) and per_layer.shape == (2,)
    assert fuse(fine, coarse, per_layer).shape == (12,) and fuse(fine, coarse, per_group).shape == (12,)


def test_neutral_start():
    fusion = AttentionFusion(seed=0)
    alpha = fusion(torch.randn(5, len(CONTEXT_NAMES)), torch.randn(5, 2, len(KEY_NAMES)))
    torch.testing.assert_close(alpha, torch.full((5, 2), 0.5))


def test_alpha_moves_when_only_the_context_changes():
    """The degenerate design (context in shared-projection keys) gives the same alpha for every context:
    with the context in the query, the same granularity descriptors must blend differently in
    different layers."""
    fusion = trained_like(1)
    keys = torch.randn(2, len(KEY_NAMES), generator=torch.Generator().manual_seed(7))
    shallow, deep = torch.zeros(len(CONTEXT_NAMES)), torch.zeros(len(CONTEXT_NAMES))
    deep[CONTEXT_NAMES.index("depth")] = 1.0
    attn, mlp = shallow.clone(), shallow.clone()
    mlp[CONTEXT_NAMES.index("is_mlp")] = 1.0
    alphas = [fusion(c, keys)[0].item() for c in (shallow, deep, mlp)]
    assert abs(alphas[0] - alphas[1]) > 1e-3 and abs(alphas[0] - alphas[2]) > 1e-3


def test_alpha_moves_when_only_the_descriptors_change():
    fusion = trained_like(2)
    context = torch.randn(len(CONTEXT_NAMES), generator=torch.Generator().manual_seed(3))
    keys = torch.randn(2, len(KEY_NAMES), generator=torch.Generator().manual_seed(4))
    other = keys.clone()
    other[0, 0] += 1.0  # only the fine granularity's score descriptor changes
    assert abs(fusion(context, keys)[0].item() - fusion(context, other)[0].item()) > 1e-3


def test_blend_weights_are_a_softmax():
    fusion = trained_like(3)
    alpha = fusion(torch.randn(50, len(CONTEXT_NAMES)), torch.randn(50, 2, len(KEY_NAMES)))
    torch.testing.assert_close(alpha.sum(-1), torch.ones(50))
    assert alpha[:, 0].std() > 1e-3  # not one constant for every row


def test_one_step_moves_the_blend_and_then_the_query_learns():
    fine, coarse = normalise(scores(16, 0)), normalise(scores(16, 1))
    fusion = AttentionFusion(seed=0)
    optimiser = torch.optim.Adam(fusion.parameters(), lr=0.1)
    context, keys = blend_inputs(fine, coarse, depth=0.1, is_mlp=False, keep=10)
    grads = []
    for _ in range(2):
        mask = soft_mask(fuse(fine, coarse, fusion(context, keys)), keep=10, temperature=0.1)
        optimiser.zero_grad()
        (mask * torch.arange(16.0)).sum().backward()
        grads.append({name: p.grad.abs().sum().item() for name, p in fusion.named_parameters()})
        optimiser.step()
    assert grads[0]["embedding"] > 0  # the first step moves the granularity embeddings
    assert grads[1]["query.2.weight"] > 0  # once the keys differ, the query gets a gradient too
    alpha = fusion(context, keys)
    assert (alpha[:, 0] - 0.5).abs().max() > 1e-3


def test_groupwise_is_the_loss_change_of_removing_the_whole_group():
    """|sum s| over a group = |first-order change of a loss| when all its weights go to zero, checked
    against autograd on a small quadratic-free function (linear in the weights)."""
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x = torch.randn(3, generator=torch.Generator().manual_seed(1))
    loss = (weight @ x).sum()
    (grad,) = torch.autograd.grad(loss, weight)
    saliency = (weight * grad).detach().reshape(2, 2, 3)  # 2 units of 2 rows
    for unit in range(2):
        removed = weight.detach().clone()
        removed[2 * unit : 2 * unit + 2] = 0
        change = loss.item() - (removed @ x).sum().item()
        assert groupwise_importance([saliency])[unit].item() == pytest.approx(abs(change), rel=1e-5)


@pytest.mark.parametrize("keep", [1, 5, 11])
def test_soft_masks_meet_the_target(keep):
    fused = scores(12, 4)
    mask = soft_mask(fused, keep, temperature=0.01)
    assert ((mask > 0.5).sum().item()) == keep
    assert abs(mask.sum().item() - keep) < 0.5
    t = keep_threshold(fused, keep)
    assert (fused > t).sum().item() == keep


def test_normalisations_and_agreement():
    s = torch.tensor([1.0, 3.0, 2.0, 6.0])
    torch.testing.assert_close(normalise(s, "mean"), s / 3)
    torch.testing.assert_close(normalise(s, "rank"), torch.tensor([0.25, 0.75, 0.5, 1.0]))
    assert abs(normalise(s, "zscore").mean().item()) < 1e-6
    assert rank_agreement(s, s * 2) == pytest.approx(1.0)
    assert rank_agreement(s, -s) == pytest.approx(-1.0)


def test_deterministic_under_seed(calib_ids):
    kept = []
    for _ in range(2):
        model = build_tiny("llama-gqa")
        report = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, progress=False, method_options={"steps": 4}),
                       calibration_ids=calib_ids).report
        kept.append(([e["mlp"]["kept"] for e in report["layers"]], report["method_details"]["alpha_fine"]))
    assert kept[0] == kept[1]


@pytest.mark.parametrize("options,allocation", [
    ({"steps": 3}, "uniform"),
    ({"steps": 3, "blend": "group", "loss": "kl", "fine": "element2"}, "uniform"),
    ({"steps": 3}, "global"),
])
def test_hywia_pruned_equals_masked_dense(calib_ids, probe_ids, options, allocation):
    model, reference = build_tiny("qwen2"), build_tiny("qwen2")
    result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, allocation=allocation, progress=False, method_options=options),
                   calibration_ids=calib_ids)
    details = result.report["method_details"]
    # learning happened: three steps move the blend off its 0.5 / 0.5 start (a softmax is always in [0, 1])
    assert len(details["loss_curve"]) == 3 and any(abs(a - 0.5) > 1e-4 for a in details["alpha_fine"].values())
    keep = {(e["layer"], kind): torch.tensor(e[kind]["kept"]) for e in result.report["layers"] for kind in ("attn", "mlp")}
    zero_removed(reference, get_adapter(reference), keep)
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids).logits, reference(probe_ids).logits, atol=1e-5, rtol=1e-5)
    for layer in range(3):  # the model was not changed by the hooks: no gate is left behind
        assert not model.model.layers[layer].mlp.down_proj._forward_pre_hooks


def test_fixed_fine_only_blend_equals_element1(calib_ids):
    a, b = build_tiny("mistral"), build_tiny("mistral")
    fine_only = prune(a, None, PruneConfig(reconstruct=False, ratio=0.3, allocation="uniform", progress=False,
                                           method_options={"fixed_alpha": 1.0}),
                      calibration_ids=calib_ids).report
    element1 = prune(b, None, PruneConfig(reconstruct=False, ratio=0.3, method="element1", progress=False), calibration_ids=calib_ids).report
    assert [e["mlp"]["kept"] for e in fine_only["layers"]] == [e["mlp"]["kept"] for e in element1["layers"]]


def test_wanda_fine_input_alone_equals_wanda_sp(calib_ids):
    """--hywia-fine wanda-sp: with the blend fixed to the fine input, the kept units are Wanda-sp's."""
    a, b = build_tiny("mistral"), build_tiny("mistral")
    fine_only = prune(a, None, PruneConfig(reconstruct=False, ratio=0.3, allocation="uniform", progress=False,
                                           method_options={"fixed_alpha": 1.0, "fine": "wanda-sp"}),
                      calibration_ids=calib_ids).report
    wanda = prune(b, None, PruneConfig(reconstruct=False, ratio=0.3, method="wanda-sp", allocation="uniform",
                                       progress=False), calibration_ids=calib_ids).report
    for kind in ("attn", "mlp"):
        assert [e[kind]["kept"] for e in fine_only["layers"]] == [e[kind]["kept"] for e in wanda["layers"]]


def test_bad_hywia_options():
    with pytest.raises(HywiaError, match="unknown HyWIA option"):
        prune(build_tiny("llama-mha"), None, PruneConfig(reconstruct=False, ratio=0.2, method_options={"stepz": 3}),
              calibration_ids=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(HywiaError, match="--hywia-blend"):
        prune(build_tiny("llama-mha"), None, PruneConfig(reconstruct=False, ratio=0.2, method_options={"blend": "head"}),
              calibration_ids=torch.zeros(2, 8, dtype=torch.long))


@pytest.mark.parametrize("coarse", ["compensated", "sequential"])
def test_coarse_only_keeps_the_units_whose_compensated_removal_costs_most(coarse):
    """fixed_alpha 0 (coarse only, uniform widths) keeps, per layer, the units whose removal leaves the largest
    output error after the best ridge refit of the rest -- recomputed here by brute-force least squares on
    inputs caught by hooks on a whole-model forward (independent of the layer-wise engine and the formula).
    sequential: the units that survive a brute-force greedy removal (each step drops the unit whose joint
    removal with those already gone costs least, every candidate refitted by least squares)."""
    from least_squares import brute_force_error

    model = build_tiny("llama-gqa")
    adapter = get_adapter(model)
    ids = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(3))
    captured = {}
    handles = [model.get_submodule(adapter.unit_output_module(layer, kind)).register_forward_pre_hook(
        lambda m, args, _k=(layer, kind): captured.setdefault(_k, []).append(args[0].reshape(-1, args[0].shape[-1])))
        for layer in range(adapter.num_layers) for kind in ("attn", "mlp")]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    damping = 0.1
    report = prune(model, None, PruneConfig(reconstruct=False, ratio=0.3, allocation="uniform", progress=False,
                                            method_options={"fixed_alpha": 0.0, "coarse_damping": damping,
                                                            "coarse": coarse}),
                   calibration_ids=ids).report
    for entry in report["layers"]:
        for kind in ("attn", "mlp"):
            x = torch.cat(captured[(entry["layer"], kind)]).double()
            weight = build_tiny("llama-gqa").get_submodule(adapter.unit_output_module(entry["layer"], kind)).weight.double()
            units = len(entry[kind]["scores"])
            size = x.shape[1] // units
            lam = damping * float((x.T @ x).diagonal().mean())
            def cost(gone):
                return brute_force_error(weight.detach(), x, [u * size + c for u in gone for c in range(size)], lam, False)

            kept = len(entry[kind]["kept"])
            if coarse == "compensated":
                brute = torch.tensor([cost([u]) for u in range(units)])
                expected = sorted(torch.argsort(brute, descending=True)[:kept].tolist())
            else:
                gone = []
                while len(gone) < units - kept:
                    gone.append(min((u for u in range(units) if u not in gone), key=lambda u: cost(gone + [u])))
                expected = sorted(set(range(units)) - set(gone))
            assert entry[kind]["kept"] == expected, (entry["layer"], kind)


@pytest.mark.parametrize("reconstruct", [False, True])
def test_intercept_compensates_with_biases_and_reloads(tmp_path, reconstruct):
    """With the intercept, the removed inputs' means go into o_proj / down_proj biases: FLAP's compensation when
    reconstruction is off (checked against a hooked dense reference), the reconstruction's intercept when on."""
    from test_forward_methods import calib_ids, dense_reference, kept_units, probe_ids
    from hywia import load_pruned, save_pruned

    model = build_tiny("llama-gqa")
    result = prune(model, None, PruneConfig(reconstruct=reconstruct, ratio=0.25, allocation="uniform", progress=False,
                                            method_options={"steps": 2, "intercept": True}), calibration_ids=calib_ids())
    assert result.report["method_details"]["bias_compensation"] == ("reconstruction intercept" if reconstruct else True)
    assert all(m.bias is not None for name, m in model.named_modules() if name.endswith(("o_proj", "down_proj")))
    if not reconstruct:
        reference = dense_reference("llama-gqa", kept_units(result.report))
        with torch.no_grad():
            torch.testing.assert_close(model(probe_ids()).logits, reference(probe_ids()).logits, atol=1e-4, rtol=1e-4)
    save_pruned(model, None, tmp_path / "out", result.report)
    reloaded = load_pruned(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe_ids()).logits, model(probe_ids()).logits)
    assert result.report["parameters"]["after"] == sum(p.numel() for p in reloaded.parameters())


@pytest.mark.parametrize("kind", ["mlp", "attn"])
def test_compensated_gates_equal_the_reconstructed_weights(probe_ids, kind):
    """Hard 0/1 masks through compensated gates give the logits of the model whose output projection was
    refitted by the reconstruction's ridge (kept columns W_S + D, removed columns zero): checked on a whole
    forward, for MLP channels and for KV groups (blocks of columns)."""
    from hywia.importance.hywia.gates import gated
    from hywia.importance.hywia.substitution import substitution_matrix
    from hywia.reconstruct import solve_compensation

    model, reference = build_tiny("llama-gqa"), build_tiny("llama-gqa")
    adapter = get_adapter(model)
    group_sets = [gs for gs in adapter.group_sets(1) if gs.key == (1, kind)]
    gs = group_sets[0]
    module = adapter.unit_output_module(1, kind)
    weight = model.get_submodule(module).weight.detach().double()
    d_in, size = weight.shape[1], weight.shape[1] // gs.num_units
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4 * d_in, d_in, generator=generator, dtype=torch.float64)
    gram = x.T @ x
    kept_units = torch.arange(0, gs.num_units, 2)
    mask = torch.zeros(gs.num_units)
    mask[kept_units] = 1.0
    columns = torch.arange(d_in).view(gs.num_units, size)
    kept, removed = columns[kept_units].reshape(-1), columns[mask == 0].reshape(-1)
    fit = solve_compensation(weight, gram, kept, removed, 0.1)
    refitted = torch.zeros_like(weight)
    refitted[:, kept] = weight[:, kept] + fit.delta
    with torch.no_grad():
        reference.get_submodule(module).weight.copy_(refitted.float())
        with gated(model, adapter, group_sets) as gates:
            gates.masks[gs.key] = mask
            gates.substitutions[gs.key] = substitution_matrix(gram, kept_units, size, 0.1)
            torch.testing.assert_close(model(probe_ids).logits, reference(probe_ids).logits, atol=1e-4, rtol=1e-4)


def test_gate_modes_follow_the_reconstruction(calib_ids):
    """auto: compensated gates when a reconstruction follows, plain without one; compensated without one: a clear error."""
    runs = {}
    for reconstruct, gates in ((True, "auto"), (False, "auto")):
        report = prune(build_tiny("llama-gqa"), None, PruneConfig(reconstruct=reconstruct, ratio=0.3, progress=False,
                                                                  method_options={"steps": 2, "gates": gates}),
                       calibration_ids=calib_ids).report
        runs[reconstruct] = report["method_details"]["gates"]
    assert runs[True] == "compensated gates" and runs[False].startswith("plain gates: no reconstruction")
    with pytest.raises(HywiaError, match="--hywia-gates compensated is not possible"):
        prune(build_tiny("llama-gqa"), None, PruneConfig(reconstruct=False, ratio=0.3, progress=False,
                                                         method_options={"steps": 2, "gates": "compensated"}),
              calibration_ids=calib_ids)


def test_auto_gates_fall_back_when_the_gram_copies_do_not_fit(calib_ids, monkeypatch):
    import hywia.importance.hywia.method as method

    monkeypatch.setattr(method, "DENSE_CACHE_BYTES", 1024)
    monkeypatch.setattr(method, "DENSE_CACHE_WEIGHT_SHARE", 0.0)
    report = prune(build_tiny("llama-gqa"), None, PruneConfig(ratio=0.3, progress=False, method_options={"steps": 2}),
                   calibration_ids=calib_ids).report
    assert "exceed the cache budget" in report["method_details"]["gates"]
