"""The greedy (sequential) compensated removal against brute-force least-squares refits of every subset."""

import math

import pytest
import torch

from hywia.importance.compensated import compensated_scores
from hywia.importance.sequential import default_block, sequential_scores

from least_squares import brute_force_error


def _problem(units, unit_size, seed=0, d_out=5, n=60):
    torch.manual_seed(seed)
    d_in = units * unit_size
    x = torch.randn(n, d_in, dtype=torch.float64) @ torch.randn(d_in, d_in, dtype=torch.float64)
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    return x, weight


def _columns(units, size):
    return [c for u in units for c in range(u * size, (u + 1) * size)]


@pytest.mark.parametrize("unit_size", [1, 2])
def test_greedy_order_and_running_error_match_brute_force(unit_size):
    """block=1: each step removes the unit whose joint removal with those already gone costs least (every
    candidate refitted by explicit least squares), and the scores rise along that order."""
    units, damping = 6, 0.2
    x, weight = _problem(units, unit_size)
    gram = x.T @ x
    lam = damping * float(gram.diagonal().mean())
    scores = sequential_scores(weight, gram.clone(), units, damping, block=1)
    removed, order = [], []
    for _ in range(units):
        candidates = [u for u in range(units) if u not in removed]
        costs = {u: brute_force_error(weight, x, _columns(removed + [u], unit_size), lam, False) for u in candidates}
        best = min(costs, key=costs.get)
        removed.append(best)
        order.append(best)
    assert torch.argsort(scores).tolist() == order
    # the last unit's score is the running error before it plus its own error: the joint error of all
    assert float(scores.max()) == pytest.approx(brute_force_error(weight, x, _columns(order, unit_size), lam, False), rel=1e-4)


def test_blocks_keep_the_joint_error_exact():
    """With blocks of 3, the running error after each block equals the brute-force joint error of the removed
    set, and each block's scores sit between the running errors before and after it."""
    units, damping = 9, 0.1
    x, weight = _problem(units, 1, seed=3)
    gram = x.T @ x
    lam = damping * float(gram.diagonal().mean())
    scores = sequential_scores(weight, gram.clone(), units, damping, block=3)
    order = torch.argsort(scores).tolist()
    before = 0.0
    for step in range(3):
        gone = order[: 3 * (step + 1)]
        after = brute_force_error(weight, x, gone, lam, False)
        block_scores = scores[order[3 * step : 3 * (step + 1)]]
        assert float(block_scores.min()) >= before * (1 - 1e-5) and float(block_scores.max()) <= after * (1 + 1e-5)
        before = after


def test_first_step_is_the_one_shot_compensated_error():
    """The cheapest unit's sequential score is its one-shot compensated error (nothing removed before it)."""
    x, weight = _problem(8, 1, seed=5)
    gram = x.T @ x
    one_shot = compensated_scores(weight, gram.clone(), 8, 0.1)
    greedy = sequential_scores(weight, gram.clone(), 8, 0.1, block=1)
    first = int(torch.argmin(greedy))
    assert first == int(torch.argmin(one_shot))
    assert float(greedy[first]) == pytest.approx(float(one_shot[first]), rel=1e-4)


def test_redundant_pair_is_not_removed_together():
    """Two channels that copy each other each look free alone (one-shot), but only one of them can go."""
    torch.manual_seed(7)
    base = torch.randn(400, 4, dtype=torch.float64)
    x = torch.cat([base, base[:, :1]], 1)  # channel 4 duplicates channel 0
    weight = torch.tensor([[3.0, 1.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    one_shot = compensated_scores(weight, x.T @ x, 5, 1e-6)
    greedy = sequential_scores(weight, x.T @ x, 5, 1e-6, block=1)
    assert set(torch.argsort(one_shot)[:2].tolist()) == {0, 4}  # one-shot would remove both copies
    assert len({0, 4} & set(torch.argsort(greedy)[:2].tolist())) == 1


def test_default_block():
    assert default_block(1536) == 6 and default_block(3) == 1 and default_block(11008) == 43


@pytest.mark.parametrize("unit_size", [1, 3])
def test_compacting_the_work_space_changes_no_score(monkeypatch, unit_size):
    import hywia.importance.sequential as sequential

    x, weight = _problem(8, unit_size, seed=3)
    gram = x.T @ x
    compacted = sequential_scores(weight, gram.clone(), 8, 0.1, block=1)
    monkeypatch.setattr(sequential, "COMPACT_AT", 0.0)  # never compact
    torch.testing.assert_close(compacted, sequential_scores(weight, gram.clone(), 8, 0.1, block=1))



def test_a_failed_removal_step_gives_one_clear_error(monkeypatch):
    from hywia.errors import HywiaError

    real = torch.linalg.cholesky_ex
    calls = []

    def failing_pivots(matrix, *args, **kwargs):
        result = real(matrix, *args, **kwargs)
        calls.append(matrix.shape[0])
        if len(calls) > 1:  # the first call factorises the damped Gram; later ones are the removal steps' pivots
            return type(result)((torch.full_like(result.L, math.nan), result.info))
        return result

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_pivots)
    x, weight = _problem(4, 1, seed=6)
    with pytest.raises(HywiaError, match="raise --hywia-coarse-damping"):
        sequential_scores(weight, x.T @ x, 4, 0.1, block=1)


def test_block_unit_errors_equal_explicit_inverses_and_skip_removed_units():
    """e_j = tr(W'_Cj [P]_CjCj^-1 W'_Cj^T) from the batched triangular solve equals an explicit inverse per
    block; removed units (zeroed rows and columns, as the removal leaves them) come out as inf, not NaN."""
    from hywia.importance.sequential import unit_errors

    torch.manual_seed(4)
    units, size, d_out = 5, 3, 7
    a = torch.randn(units * size, 40, dtype=torch.float64)
    inverse = a @ a.T + 0.5 * torch.eye(units * size, dtype=torch.float64)
    weight_t = torch.randn(units * size, d_out, dtype=torch.float64)
    present = torch.tensor([True, False, True, True, False])
    for unit in (1, 4):
        columns = slice(unit * size, (unit + 1) * size)
        inverse[columns] = 0.0
        inverse[:, columns] = 0.0
        weight_t[columns] = 0.0
    errors = unit_errors(weight_t, inverse, present, size)
    for unit in range(units):
        columns = slice(unit * size, (unit + 1) * size)
        if not present[unit]:
            assert errors[unit] == math.inf
            continue
        w = weight_t[columns].T  # W'_Cj [d_out, s]
        expected = torch.trace(w @ torch.linalg.inv(inverse[columns, columns]) @ w.T)
        assert float(errors[unit]) == pytest.approx(float(expected), rel=1e-10)
