"""The automatic --round-to (GPU-friendly MLP widths), and rounded allocations against a brute force."""

import itertools

import pytest
import torch

from hywia.allocate import (allocate_global, allocate_uniform, budgets_for, hardware_round_to,
                            resolve_round_to)
from hywia.errors import HywiaError
from hywia.models.groups import GroupSet


@pytest.mark.parametrize("device, widths, expected", [
    ("cpu", [11008] * 32, 1),  # off on the CPU unless asked
    ("cuda", [11008] * 32, 64),  # LLaMA-7B
    ("cuda:1", [13824] * 40, 128),  # LLaMA-13B
    ("auto", [14336] * 32, 128),  # Llama-3-8B over several GPUs
    ("cuda", [1536] * 30, 64),  # SmolLM2-135M: 64 is 4% of the width
    ("cuda", [40] * 3, 1),  # a tiny model: nothing sensible to round to
    ("cuda", [], 1),
])
def test_hardware_round_to(device, widths, expected):
    assert hardware_round_to(device, widths) == expected


def group_sets(widths):
    return [gs for layer, w in enumerate(widths) for gs in (GroupSet(layer, "attn", 4), GroupSet(layer, "mlp", w))]


def test_resolve_round_to_reports_the_automatic_choice():
    step, note = resolve_round_to("auto", "cuda", group_sets([11008, 11008]))
    assert step == 64 and "multiples of 64" in note and "--round-to 1" in note
    assert resolve_round_to("auto", "cpu", group_sets([11008])) == (1, None)
    assert resolve_round_to(8, "cuda", group_sets([11008])) == (8, None)
    assert resolve_round_to("16", "cpu", group_sets([11008])) == (16, None)
    for bad in ("x", 0, "-3"):
        with pytest.raises(HywiaError, match="--round-to"):
            resolve_round_to(bad, "cuda", group_sets([64]))


def brute_force_uniform(budget_list, target):
    """Every (KV groups, MLP width) pair a uniform layout allows: the least distance to the target."""
    attn = [b for b in budget_list if b.key[1] == "attn"]
    mlp = [b for b in budget_list if b.key[1] == "mlp"]
    best = None
    for keep_attn in range(attn[0].min_keep, attn[0].num_units + 1):
        for keep_mlp in range(mlp[0].min_keep, mlp[0].num_units + 1, mlp[0].step):
            removed = (sum((b.num_units - keep_attn) * b.params_per_unit for b in attn)
                       + sum((b.num_units - keep_mlp) * b.params_per_unit for b in mlp))
            best = min(best, abs(removed - target)) if best is not None else abs(removed - target)
    return best


@pytest.mark.parametrize("n_mlp, step", [(40, 8), (64, 16), (100, 32), (130, 64)])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4])
def test_rounded_uniform_widths_are_multiples_and_the_closest_achievable(n_mlp, step, ratio):
    params = {}
    sets = []
    for layer in range(3):
        for gs in (GroupSet(layer, "attn", 4), GroupSet(layer, "mlp", n_mlp)):
            sets.append(gs)
            params[gs.key] = 300 if gs.kind == "attn" else 7
    budget_list = budgets_for(sets, params, step)
    total = sum(b.num_units * b.params_per_unit for b in budget_list) + 500
    allocation = allocate_uniform(budget_list, ratio, total)
    kept_mlp = {c for k, c in allocation.keep_counts.items() if k[1] == "mlp"}
    assert len(kept_mlp) == 1 and next(iter(kept_mlp)) % step == 0
    closest = brute_force_uniform(budget_list, round(ratio * total))
    resolution = 7 * 3  # ties within one channel per layer are broken by balance (allocate_uniform)
    assert abs(allocation.removed_params - round(ratio * total)) <= closest + resolution


@pytest.mark.parametrize("seed", range(4))
def test_rounded_global_widths_are_multiples_of_the_step(seed):
    step, n_mlp = 16, 70  # 70 is not a multiple: the 6 channels beyond the last step go first
    sets = [GroupSet(layer, "mlp", n_mlp) for layer in range(3)]
    budget_list = budgets_for(sets, {gs.key: 5 for gs in sets}, step)
    generator = torch.Generator().manual_seed(seed)
    scores = {gs.key: torch.rand(n_mlp, generator=generator) for gs in sets}
    total = 3 * n_mlp * 5 + 100
    allocation = allocate_global(budget_list, scores, 0.4, total)
    assert all(c % step == 0 and c >= step for c in allocation.keep_counts.values())
    # brute force over every multiple-of-step layout: none lands closer to the target
    target = round(0.4 * total)
    options = range(step, n_mlp + 1, step)
    closest = min(abs(sum((n_mlp - k) * 5 for k in keep) - target) for keep in itertools.product(options, repeat=3))
    assert abs(allocation.removed_params - target) <= closest + step * 5
