"""The compensating ridge update against brute force, its limits (lambda -> inf, FLAP, exact recovery)."""

import math

import pytest
import torch

from hywia.errors import HywiaError
from hywia.importance.activation import compensation_bias
from hywia.reconstruct import output_error, relative_errors, solve_compensation
from hywia.reconstruct import ridge
from hywia.reconstruct.ridge import CHOLESKY, PSEUDO_INVERSE

D_OUT, D_IN, TOKENS = 5, 12, 40


def problem(seed=0, tokens=TOKENS, offset=0.0):
    """W [d_out, d_in], X [d_in, n] (columns = tokens), kept S and removed R columns."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D_OUT, D_IN, generator=g, dtype=torch.float64)
    x = torch.randn(D_IN, tokens, generator=g, dtype=torch.float64) + offset
    perm = torch.randperm(D_IN, generator=g)
    kept, removed = torch.sort(perm[:8]).values, torch.sort(perm[8:]).values
    return w, x, kept, removed


def stats(x):
    return dict(input_sum=x.sum(1), count=x.shape[1])


def lam_of(x, kept, damping):
    return damping * (x[kept] @ x[kept].T).diagonal().mean()


def brute_force(w, x, kept, damping, intercept=False):
    """lstsq on the stacked problem [X_S^T (1); sqrt(lambda) I (0)] -> [(W X)^T; sqrt(lambda) W_S^T]."""
    lam = lam_of(x, kept, damping)
    n, s = x.shape[1], len(kept)
    design = torch.cat([x[kept].T, math.sqrt(lam) * torch.eye(s, dtype=torch.float64)])
    target = torch.cat([(w @ x).T, math.sqrt(lam) * w[:, kept].T])
    if intercept:
        design = torch.cat([design, torch.cat([torch.ones(n, 1), torch.zeros(s, 1)]).double()], dim=1)
    solution = torch.linalg.lstsq(design, target).solution
    return (solution[:s].T, solution[s].clone() if intercept else None)


@pytest.mark.parametrize("damping", [0.01, 0.3, 5.0])
def test_matches_brute_force_least_squares(damping):
    w, x, kept, removed = problem()
    fit = solve_compensation(w, x @ x.T, kept, removed, damping)
    expected, _ = brute_force(w, x, kept, damping)
    torch.testing.assert_close(w[:, kept] + fit.delta, expected, rtol=1e-9, atol=1e-9)
    assert fit.bias is None and fit.solver == CHOLESKY
    assert fit.lam == pytest.approx(float(lam_of(x, kept, damping)))
    # the closed form as written in the docstring
    g = x @ x.T
    closed = w[:, kept] + w[:, removed] @ g[removed][:, kept] @ torch.linalg.inv(
        g[kept][:, kept] + fit.lam * torch.eye(len(kept), dtype=torch.float64))
    torch.testing.assert_close(w[:, kept] + fit.delta, closed, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rows_per_chunk", [None, 1, 3])
@pytest.mark.parametrize("damping", [0.01, 0.3, 5.0])
def test_intercept_matches_brute_force(damping, rows_per_chunk, monkeypatch):
    if rows_per_chunk:  # the Gram blocks gathered a few rows at a time
        monkeypatch.setattr(ridge, "ROW_CHUNK_BYTES", 8 * D_IN * rows_per_chunk)
    w, x, kept, removed = problem(seed=1, offset=0.7)  # non-zero means: the intercept matters
    fit = solve_compensation(w, x @ x.T, kept, removed, damping, **stats(x))
    expected_w, expected_b = brute_force(w, x, kept, damping, intercept=True)
    torch.testing.assert_close(w[:, kept] + fit.delta, expected_w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fit.bias, expected_b, rtol=1e-9, atol=1e-9)


def test_the_fit_lowers_the_ridge_objective():
    w, x, kept, removed = problem(seed=2)
    damping = 0.2
    fit = solve_compensation(w, x @ x.T, kept, removed, damping)

    def objective(w_s):
        return ((w_s @ x[kept] - w @ x).pow(2).sum() + fit.lam * (w_s - w[:, kept]).pow(2).sum()).item()

    best = objective(w[:, kept] + fit.delta)
    assert best < objective(w[:, kept])
    g = torch.Generator().manual_seed(3)
    for _ in range(5):  # any perturbation is worse
        noise = 1e-3 * torch.randn(fit.delta.shape, generator=g, dtype=torch.float64)
        assert best < objective(w[:, kept] + fit.delta + noise)


def test_infinite_damping_leaves_the_kept_weights():
    w, x, kept, removed = problem(seed=4)
    assert torch.equal(solve_compensation(w, x @ x.T, kept, removed, math.inf).delta, torch.zeros(D_OUT, len(kept),
                                                                                                   dtype=torch.float64))
    huge = solve_compensation(w, x @ x.T, kept, removed, 1e12)
    assert huge.delta.abs().max() < 1e-9


def test_infinite_damping_with_intercept_is_flap_compensation():
    w, x, kept, removed = problem(seed=5, offset=0.5)
    flap = compensation_bias(w, x.mean(1), removed).double()
    for damping in (math.inf, 1e12):
        fit = solve_compensation(w, x @ x.T, kept, removed, damping, **stats(x))
        assert fit.delta.abs().max() < 1e-9
        torch.testing.assert_close(fit.bias, flap, rtol=1e-5, atol=1e-6)  # compensation_bias is float32


@pytest.mark.parametrize("intercept", [False, True])
def test_exact_recovery_when_removed_inputs_are_linear_in_kept_ones(intercept):
    g = torch.Generator().manual_seed(6)
    w, x, kept, removed = problem(seed=6)
    mix = torch.randn(len(removed), len(kept), generator=g, dtype=torch.float64)
    x[removed] = mix @ x[kept] + (torch.randn(len(removed), 1, generator=g, dtype=torch.float64) if intercept else 0)
    extra = stats(x) if intercept else {}
    fit = solve_compensation(w, x @ x.T, kept, removed, 1e-12, **extra)
    rebuilt = (w[:, kept] + fit.delta) @ x[kept] + (fit.bias[:, None] if intercept else 0)
    torch.testing.assert_close(rebuilt, w @ x, rtol=1e-7, atol=1e-7)
    _, after = relative_errors(w, x @ x.T, kept, removed, fit, **extra)
    assert after < 1e-6


@pytest.mark.parametrize("rows_per_chunk", [None, 2])
def test_relative_errors_match_a_direct_computation(monkeypatch, rows_per_chunk):
    if rows_per_chunk:  # several chunks of output rows, the last one short
        monkeypatch.setattr(ridge, "ROW_CHUNK_BYTES", 8 * D_IN * rows_per_chunk)
    w, x, kept, removed = problem(seed=7, offset=0.3)
    fit = solve_compensation(w, x @ x.T, kept, removed, 0.1, **stats(x))
    dense = w @ x
    before = (w[:, kept] @ x[kept] - dense).norm() / dense.norm()
    after = ((w[:, kept] + fit.delta) @ x[kept] + fit.bias[:, None] - dense).norm() / dense.norm()
    got = relative_errors(w, x @ x.T, kept, removed, fit, **stats(x))
    assert got == pytest.approx((before.item(), after.item()), rel=1e-9)
    assert got[1] < got[0]
    assert output_error(w, x @ x.T) == pytest.approx(dense.pow(2).sum().item(), rel=1e-12)


def test_too_few_tokens_without_damping_falls_back_to_the_pseudo_inverse():
    w, x, kept, removed = problem(seed=8, tokens=5)  # rank 5 < 8 kept columns: G_SS is singular
    fit = solve_compensation(w, x @ x.T, kept, removed, 0.0)
    assert fit.solver == PSEUDO_INVERSE
    # the minimum-norm least-squares solution of D X_S = W_R X_R
    expected = torch.linalg.lstsq(x[kept].T, (w[:, removed] @ x[removed]).T, driver="gelsd").solution.T
    torch.testing.assert_close(fit.delta, expected, rtol=1e-6, atol=1e-8)


def test_bad_input_gives_a_clear_error():
    w, x, kept, removed = problem()
    with pytest.raises(HywiaError, match="damping"):
        solve_compensation(w, x @ x.T, kept, removed, -1.0)
    g = x @ x.T
    g[kept[0], kept[0]] = float("nan")
    with pytest.raises(HywiaError, match="NaN"):
        solve_compensation(w, g, kept, removed, 0.1)


@pytest.mark.parametrize("rows_per_chunk", [None, 1, 2])
@pytest.mark.parametrize("damping", [0.01, 0.3])
def test_consumed_solve_matches_brute_force_and_direct_errors(damping, rows_per_chunk, monkeypatch):
    if rows_per_chunk:  # output rows solved a few at a time
        monkeypatch.setattr(ridge, "ROW_CHUNK_BYTES", 8 * 8 * rows_per_chunk)
    w, x, kept, removed = problem(seed=4)
    gram = (x @ x.T).contiguous()
    fit = ridge.consume_and_solve(w, gram, kept, removed, damping)
    expected, _ = brute_force(w, x, kept, damping)
    torch.testing.assert_close(w[:, kept] + fit.solution.delta, expected, rtol=1e-9, atol=1e-9)
    assert fit.solution.lam == pytest.approx(float(lam_of(x, kept, damping)))
    reference = (w @ x).norm()
    assert fit.error_before == pytest.approx(float((w[:, kept] @ x[kept] - w @ x).norm() / reference), rel=1e-9)
    assert fit.error_after == pytest.approx(float((expected @ x[kept] - w @ x).norm() / reference), rel=1e-7)


def test_consumed_solve_leaves_the_gram_alone_when_it_cannot_run():
    w, x, kept, removed = problem(seed=5)
    gram = (x @ x.T).contiguous()
    before = gram.clone()
    assert ridge.consume_and_solve(w, gram, kept, removed, math.inf) is None  # no update wanted
    assert ridge.consume_and_solve(w, gram, kept, removed[:0], 0.1) is None  # nothing removed
    torch.testing.assert_close(gram, before, rtol=0, atol=0)
