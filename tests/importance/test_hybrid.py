"""HyWIA's fusion: a pure, tested module; and the whole method end to end on tiny models."""

import pytest
import torch

from conftest import build_tiny
from hywia import HywiaError, PruneConfig, prune
from hywia.models.adapters import get_adapter
from hywia.importance.hywia.fusion import (
    DESCRIPTOR_NAMES,
    AttentionFusion,
    fuse,
    granularity_descriptors,
    keep_threshold,
    normalise,
    rank_agreement,
    soft_mask,
)
from tiny_models import zero_removed


def scores(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.01


def test_descriptor_and_blend_shapes():
    fine, coarse = normalise(scores(12, 0)), normalise(scores(12, 1))
    x = granularity_descriptors(fine, coarse, depth=0.5, is_mlp=True, keep=8)
    assert x.shape == (12, 2, len(DESCRIPTOR_NAMES))
    fusion = AttentionFusion(seed=0)
    per_group, per_layer = fusion(x), fusion(x.mean(dim=0))
    assert per_group.shape == (12, 2) and per_layer.shape == (2,)
    assert fuse(fine, coarse, per_layer).shape == (12,) and fuse(fine, coarse, per_group).shape == (12,)


def test_blend_weights_are_a_softmax():
    fusion = AttentionFusion(seed=3)
    with torch.no_grad():
        fusion.key.weight.normal_()
    alpha = fusion(torch.randn(50, 2, len(DESCRIPTOR_NAMES)))
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(50))
    assert AttentionFusion(seed=0)(torch.randn(2, len(DESCRIPTOR_NAMES))).tolist() == [0.5, 0.5]  # neutral start


def test_gradients_reach_the_fusion_parameters():
    fine, coarse = normalise(scores(16, 0)), normalise(scores(16, 1))
    fusion = AttentionFusion(seed=0)
    x = granularity_descriptors(fine, coarse, depth=0.1, is_mlp=False, keep=10)
    mask = soft_mask(fuse(fine, coarse, fusion(x)), keep=10, temperature=0.1)
    (mask * torch.arange(16.0)).sum().backward()
    assert fusion.key.weight.grad is not None and fusion.key.weight.grad.abs().sum() > 0
    assert fusion.query.grad is not None


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
        report = prune(model, None, PruneConfig(ratio=0.3, progress=False, method_options={"steps": 4}),
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
    result = prune(model, None, PruneConfig(ratio=0.3, allocation=allocation, progress=False, method_options=options),
                   calibration_ids=calib_ids)
    details = result.report["method_details"]
    assert len(details["loss_curve"]) == 3 and all(0 <= a <= 1 for a in details["alpha_fine"].values())
    keep = {(e["layer"], kind): torch.tensor(e[kind]["kept"]) for e in result.report["layers"] for kind in ("attn", "mlp")}
    zero_removed(reference, get_adapter(reference), keep)
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids).logits, reference(probe_ids).logits, atol=1e-5, rtol=1e-5)
    for layer in range(3):  # the model was not changed by the hooks: no gate is left behind
        assert not model.model.layers[layer].mlp.down_proj._forward_pre_hooks


def test_fixed_fine_only_blend_equals_element1(calib_ids):
    a, b = build_tiny("mistral"), build_tiny("mistral")
    fine_only = prune(a, None, PruneConfig(ratio=0.3, progress=False, method_options={"fixed_alpha": 1.0}),
                      calibration_ids=calib_ids).report
    element1 = prune(b, None, PruneConfig(ratio=0.3, method="element1", progress=False), calibration_ids=calib_ids).report
    assert [e["mlp"]["kept"] for e in fine_only["layers"]] == [e["mlp"]["kept"] for e in element1["layers"]]


def test_bad_hywia_options():
    with pytest.raises(HywiaError, match="unknown HyWIA option"):
        prune(build_tiny("llama-mha"), None, PruneConfig(ratio=0.2, method_options={"stepz": 3}),
              calibration_ids=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(HywiaError, match="--hywia-blend"):
        prune(build_tiny("llama-mha"), None, PruneConfig(ratio=0.2, method_options={"blend": "head"}),
              calibration_ids=torch.zeros(2, 8, dtype=torch.long))
