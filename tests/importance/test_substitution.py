"""Compensated gates: the substitution matrix against the reconstruction's ridge fit and explicit regressions."""

import pytest
import torch

from hywia.importance.hywia.substitution import substitution_matrix
from hywia.reconstruct import solve_compensation


def _data(units=5, size=2, n=80, seed=0):
    torch.manual_seed(seed)
    d_in = units * size
    x = torch.randn(n, d_in, dtype=torch.float64) @ torch.randn(d_in, d_in, dtype=torch.float64)  # rows = tokens
    return x, x.T @ x


def _columns(units, size):
    return torch.tensor([u * size + c for u in units for c in range(size)])


def ridge_prediction(x, targets, predictors, lam):
    """Explicit ridge regression of the target columns on the predictor columns (coefficients penalised)."""
    design, target = x[:, predictors], x[:, targets]
    coefficients = torch.linalg.solve(design.T @ design + lam * torch.eye(len(predictors), dtype=x.dtype), design.T @ target)
    return design @ coefficients


@pytest.mark.parametrize("size", [1, 3])
def test_hard_gates_give_the_reconstructed_output(size):
    """Gating the removed units off with the substitution equals the ridge reconstruction of the weights."""
    x, gram = _data(units=5, size=size)
    kept_units = torch.tensor([0, 2, 3])
    kept, removed = _columns([0, 2, 3], size), _columns([1, 4], size)
    weight = torch.randn(4, x.shape[1], dtype=torch.float64)
    p = substitution_matrix(gram, kept_units, size, 0.2).double()
    mask = torch.zeros(x.shape[1], dtype=torch.float64)
    mask[kept] = 1
    gated = mask * x + (1 - mask) * (x @ p.T)
    fit = solve_compensation(weight, gram, kept, removed, 0.2)
    torch.testing.assert_close(gated @ weight.T, x[:, kept] @ (weight[:, kept] + fit.delta).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2])
def test_kept_units_are_replaced_by_their_prediction_from_the_other_kept_ones(size):
    x, gram = _data(units=5, size=size, seed=1)
    kept_units = [0, 1, 3, 4]
    kept = _columns(kept_units, size)
    lam = 0.3 * float(gram[kept][:, kept].diagonal().mean())
    p = substitution_matrix(gram, torch.tensor(kept_units), size, 0.3).double()
    for unit in kept_units:
        own = _columns([unit], size)
        rest = _columns([u for u in kept_units if u != unit], size)
        torch.testing.assert_close((x @ p.T)[:, own], ridge_prediction(x, own, rest, lam), rtol=1e-4, atol=1e-4)
    # removed columns: predicted from all kept ones
    removed = _columns([2], size)
    torch.testing.assert_close((x @ p.T)[:, removed], ridge_prediction(x, removed, kept, lam), rtol=1e-4, atol=1e-4)
