"""The batched fusion step (``FlatScores``, ``soft_masks``) against the per-group-set formulas it replaces."""

import pytest
import torch

from hywia.importance.hywia.flat import FlatScores
from hywia.importance.hywia.fusion import fuse, soft_mask, soft_masks


def rand(n, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.01


@pytest.mark.parametrize("keeps", [[0, 1, 5, 11, 12], [6, 6, 6, 6, 6]])
def test_batched_soft_masks_equal_each_rows_soft_mask(keeps):
    scores = torch.stack([rand(12, seed) for seed in range(len(keeps))])
    masks = soft_masks(scores, torch.tensor(keeps), temperature=0.1)
    for row, keep in enumerate(keeps):
        torch.testing.assert_close(masks[row], soft_mask(scores[row], keep, 0.1))


def layout():
    """Group sets of three widths, interleaved as layers list them (attention 4 KV groups, MLP 10 or 7 channels)."""
    keys = [(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp"), (2, "attn"), (2, "mlp")]
    widths = {(0, "attn"): 4, (0, "mlp"): 10, (1, "attn"): 4, (1, "mlp"): 7, (2, "attn"): 4, (2, "mlp"): 10}
    fine = {k: rand(widths[k], i) for i, k in enumerate(keys)}
    coarse = {k: rand(widths[k], 10 + i) for i, k in enumerate(keys)}
    keep = {(0, "attn"): 3, (0, "mlp"): 8, (1, "attn"): 4, (1, "mlp"): 5, (2, "attn"): 1, (2, "mlp"): 9}
    return keys, fine, coarse, keep


def test_flat_fuse_and_masks_equal_the_per_group_set_ones():
    keys, fine, coarse, keep = layout()
    flat = FlatScores(keys, fine, coarse, torch.device("cpu"))
    assert [len(fine[k]) for k in flat.keys] == sorted(len(fine[k]) for k in keys)  # widths form blocks
    alpha = torch.softmax(torch.randn(sum(len(v) for v in fine.values()), 2, generator=torch.Generator().manual_seed(3)), -1)
    per_key_alpha = flat.split(alpha)
    fused = flat.fuse(alpha)
    masks = flat.split(flat.soft_masks(fused, keep, temperature=0.2))
    for key in keys:
        expected = fuse(fine[key], coarse[key], per_key_alpha[key])
        torch.testing.assert_close(flat.split(fused)[key], expected)
        torch.testing.assert_close(masks[key], soft_mask(expected, keep[key], 0.2))


def test_per_layer_blend_expands_to_every_unit_of_its_group_set():
    keys, fine, coarse, _ = layout()
    flat = FlatScores(keys, fine, coarse, torch.device("cpu"))
    rows = torch.softmax(torch.randn(len(keys), 2, generator=torch.Generator().manual_seed(4)), -1)
    fused = flat.split(flat.fuse(flat.expand(rows)))
    for row, key in zip(rows, flat.keys):
        torch.testing.assert_close(fused[key], row[0] * fine[key] + row[1] * coarse[key])


def test_gradient_reaches_the_blend_through_the_batched_masks():
    keys, fine, coarse, keep = layout()
    flat = FlatScores(keys, fine, coarse, torch.device("cpu"))
    logits = torch.zeros(len(flat.fine), 2, requires_grad=True)
    weights = torch.randn(len(flat.fine), generator=torch.Generator().manual_seed(5))
    (flat.soft_masks(flat.fuse(torch.softmax(logits, -1)), keep, 0.2) * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    per_key = flat.split(torch.softmax(reference, -1))
    total = sum((soft_mask(fuse(fine[k], coarse[k], per_key[k]), keep[k], 0.2) * w).sum()
                for k, w in flat.split(weights).items())
    total.backward()
    torch.testing.assert_close(logits.grad, reference.grad)
