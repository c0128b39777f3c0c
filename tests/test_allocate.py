"""Keep counts hit the parameter target exactly up to the MLP step; impossible requests fail clearly."""

import pytest
import torch

from types import SimpleNamespace

from hywia.allocate import (
    UnitBudget,
    allocate_global,
    allocate_uniform,
    budgets_for,
    check_feasible,
    check_ratio,
    parse_layer_range,
)
from hywia.errors import HywiaError


def budgets(layers=4, n_kv=3, kv_cost=1000, n_mlp=64, mlp_cost=30, step=1):
    out = []
    for layer in range(layers):
        out.append(UnitBudget((layer, "attn"), n_kv, kv_cost, 1, 1))
        out.append(UnitBudget((layer, "mlp"), n_mlp, mlp_cost, step, step))
    return out


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35, 0.5])
@pytest.mark.parametrize("step", [1, 8])
def test_uniform_hits_target_within_one_mlp_step(ratio, step):
    total = 20000
    allocation = allocate_uniform(budgets(step=step), ratio, total)
    assert abs(allocation.removed_params - ratio * total) <= step * 30 * 4 / 2 + 1
    kept_mlp = {c for (layer, kind), c in allocation.keep_counts.items() if kind == "mlp"}
    assert len(kept_mlp) == 1 and next(iter(kept_mlp)) % step == 0


def test_global_respects_minimum_and_step():
    b = budgets(step=8)
    scores = {x.key: torch.rand(x.num_units, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(b)}
    scores[(0, "mlp")] = scores[(0, "mlp")] * 1e-3  # layer 0's MLP is the least important
    allocation = allocate_global(b, scores, 0.3, 20000)
    assert allocation.removed_params >= 0.3 * 20000
    assert allocation.keep_counts[(0, "mlp")] == 8
    for (layer, kind), count in allocation.keep_counts.items():
        assert count >= 1 and (kind == "attn" or count % 8 == 0)


def _group_sets(layers=4, n_kv=3, n_mlp=64):
    sets = []
    for layer in range(layers):
        sets.append(SimpleNamespace(key=(layer, "attn"), kind="attn", layer=layer, num_units=n_kv))
        sets.append(SimpleNamespace(key=(layer, "mlp"), kind="mlp", layer=layer, num_units=n_mlp))
    return sets


def test_min_width_floors_are_rounded_up_to_the_step():
    sets = _group_sets()
    costs = {gs.key: 1000 if gs.kind == "attn" else 30 for gs in sets}
    plain = {b.key: b.min_keep for b in budgets_for(sets, costs, 8)}
    assert plain[(0, "attn")] == 1 and plain[(0, "mlp")] == 8
    floored = {b.key: b.min_keep for b in budgets_for(sets, costs, 8, min_width=0.3)}
    assert floored[(0, "attn")] == 1 and floored[(0, "mlp")] == 24  # ceil(0.9) KV groups; 19.2 -> 24 channels
    assert {b.key: b.min_keep for b in budgets_for(sets, costs, 1, min_width=0.5)}[(2, "attn")] == 2
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(HywiaError, match="--min-width"):
            budgets_for(sets, costs, 8, min_width=bad)


def test_global_keeps_the_floor_where_scores_alone_would_strip_a_layer():
    sets = _group_sets()
    costs = {gs.key: 1000 if gs.kind == "attn" else 30 for gs in sets}
    scores = {gs.key: torch.rand(gs.num_units, generator=torch.Generator().manual_seed(i)) for i, gs in enumerate(sets)}
    scores[(0, "mlp")] = scores[(0, "mlp")] * 1e-3
    b = budgets_for(sets, costs, 8, min_width=0.25)
    allocation = allocate_global(b, scores, 0.3, 20000, per_parameter=False)
    assert allocation.keep_counts[(0, "mlp")] == 16 and allocation.removed_params >= 0.3 * 20000
    assert all(count >= budget.min_keep for budget, count in zip(b, allocation.keep_counts.values()))
    uniform = allocate_uniform(budgets_for(sets, costs, 1, min_width=0.6), 0.1, 20000)
    assert uniform.keep_counts[(0, "attn")] >= 2  # the floor binds uniform widths too
    with pytest.raises(HywiaError, match="--min-width"):
        check_feasible(budgets_for(sets, costs, 8, min_width=0.9), 0.5, 20000)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.0, 1.5, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(HywiaError, match="--ratio"):
        check_ratio(ratio)


def test_unreachable_ratio():
    with pytest.raises(HywiaError, match="cannot remove"):
        allocate_uniform(budgets(), 0.9, 20000)


def test_layer_ranges():
    assert parse_layer_range("4:28", 30) == list(range(4, 28))
    assert parse_layer_range("2:-2", 6) == [2, 3]
    assert parse_layer_range(None, 3) == [0, 1, 2]
    for bad in ("4", "a:b", "10:12"):
        with pytest.raises(HywiaError, match="--layers"):
            parse_layer_range(bad, 6)
