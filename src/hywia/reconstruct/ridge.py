"""The compensating update of an output projection after some of its input columns are removed.

Notation (one output projection: ``o_proj`` for attention units, ``down_proj`` for MLP channels):
``W`` [d_out, d_in] its weight, ``X`` [d_in, n] its calibration inputs (one column per token, gathered
in the *pruned* model), ``G = X X^T`` their Gram matrix, ``S`` the kept and ``R`` the removed input
columns, ``s = X 1`` the per-feature sums and ``mu = s / n`` the means.

Without intercept, the kept weights are refitted by ridge regression *toward the kept weights*
(not toward zero):

    min_{W_S'}  ||W_S' X_S - W X||^2 + lambda ||W_S' - W_S||^2
    =>  W_S' = W_S + W_R G_RS (G_SS + lambda I)^-1,        lambda = damping * mean(diag(G_SS))

(the damping is relative, so it means the same for every layer; lambda -> inf leaves W_S unchanged,
lambda -> 0 is plain least squares). With an unregularised intercept ``b`` (X_S augmented with a row
of ones), eliminating ``b`` leaves the same problem on the centred Gram ``C = G - n mu mu^T``:

    D (C_SS + lambda I) = W_R C_RS,    W_S' = W_S + D,    b = W_R mu_R - D mu_S

and as lambda -> inf, D -> 0 and b -> W_R mu_R: FLAP's bias compensation is the zero-order special case.
All arithmetic is float64 on the Gram's device; the solve is a Cholesky, with an eigendecomposition
(pseudo-inverse) as the fallback when the system is not positive definite (lambda = 0 with fewer tokens
than kept columns, or constant inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..calibration.gram_space import all_finite, cholesky_in_place, compact_square
from ..errors import HywiaError

CHOLESKY = "cholesky"
PSEUDO_INVERSE = "eigh pseudo-inverse"


@dataclass
class Compensation:
    """The solution for one output projection."""

    delta: torch.Tensor  # [d_out, |S|] float64: W_S' - W_S
    bias: torch.Tensor | None  # [d_out] float64 intercept, or None without one
    lam: float  # the absolute ridge strength lambda
    solver: str  # CHOLESKY or PSEUDO_INVERSE


def check_damping(damping: float) -> float:
    damping = float(damping)
    if math.isnan(damping) or damping < 0:
        raise HywiaError(f"--reconstruct-damping must be >= 0 (inf = no update), got {damping}")
    return damping


def _check_finite(*tensors: torch.Tensor) -> None:
    if not all(all_finite(t) for t in tensors):
        raise HywiaError("reconstruction: the calibration activations contain inf or NaN; the least-squares "
                         "system cannot be solved (run in float32 or bfloat16 rather than float16)")


def pseudo_inverse_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """The minimum-norm ``matrix^-1 rhs`` of a symmetric positive semi-definite ``matrix``, from its
    eigendecomposition (eigenvalues below ``d * eps * max`` count as zero)."""
    try:
        values, vectors = torch.linalg.eigh(matrix)
    except RuntimeError as error:  # eigh failing to converge
        raise HywiaError(f"reconstruction: the Gram matrix is not positive definite and its eigendecomposition "
                         f"failed ({error}); raise --reconstruct-damping") from error
    info64 = torch.finfo(values.dtype)
    cutoff = values.abs().max().clamp(min=info64.tiny) * matrix.shape[0] * info64.eps
    inverse = torch.where(values > cutoff, 1.0 / values, torch.zeros_like(values))
    return vectors @ (inverse[:, None] * (vectors.T @ rhs))


def solve_symmetric(build: Callable[[], torch.Tensor], rhs: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``A^-1 rhs`` for the symmetric positive semi-definite float64 matrix A that ``build()`` returns as a fresh
    tensor: Cholesky in place of A (no second d x d copy) when A is positive definite; otherwise the
    factorisation has overwritten A, so it is built again for :func:`pseudo_inverse_solve`."""
    matrix = build()
    _check_finite(matrix, rhs)
    factor = cholesky_in_place(matrix)
    if factor is not None:
        return factor_solve(factor, rhs), CHOLESKY
    del matrix
    return pseudo_inverse_solve(build(), rhs), PSEUDO_INVERSE


def factor_solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^-1 rhs`` from the lower Cholesky factor by two triangular solves on the whole, contiguous
    factor (``torch.cholesky_solve`` clones the factor: one more d x d float64 copy)."""
    return torch.linalg.solve_triangular(factor.mT, torch.linalg.solve_triangular(factor, rhs, upper=False), upper=True)


def solve_compensation(
    weight: torch.Tensor,
    gram: torch.Tensor,
    kept: torch.Tensor,
    removed: torch.Tensor,
    damping: float,
    *,
    input_sum: torch.Tensor | None = None,
    count: int | None = None,
) -> Compensation:
    """Ridge refit of the kept columns of ``weight`` (module docstring for the formulas).

    ``gram`` = X X^T [d_in, d_in]; ``kept`` / ``removed`` = column indices S / R. With ``input_sum``
    (= X 1) and ``count`` (= n) an unregularised intercept is fitted too. Work space beyond ``gram``: one
    |S| x |S| float64 matrix (gathered in one step and factorised in place) and the d_out x |S| solution.
    """
    damping = check_damping(damping)
    device = gram.device
    g = gram.to(torch.float64)  # no copy when already float64
    kept = kept.to(device=device, dtype=torch.long)
    removed = removed.to(device=device, dtype=torch.long)
    w_r = weight.detach().index_select(1, removed.to(weight.device)).to(device=device, dtype=torch.float64)
    intercept = input_sum is not None
    mu_s = mu_r = None
    if intercept:
        if not count:
            raise HywiaError("an intercept needs the token count")
        mu = input_sum.to(device=device, dtype=torch.float64) / count
        mu_s, mu_r = mu.index_select(0, kept), mu.index_select(0, removed)

    def block(rows: torch.Tensor, rows_mu: torch.Tensor | None) -> torch.Tensor:
        """G_{rows,S}, centred with an intercept: a fresh tensor, gathered ``ROW_CHUNK_BYTES`` of rows at a time
        (one advanced-indexing gather materialises int64 indices of the whole block: 2-4x its size)."""
        out = torch.empty(len(rows), len(kept), dtype=g.dtype, device=device)
        for chunk in _row_slices(len(rows), g.shape[1]):
            torch.index_select(g.index_select(0, rows[chunk]), 1, kept, out=out[chunk])
        if intercept:
            out.addr_(rows_mu, mu_s, alpha=-count)
        return out

    def system() -> torch.Tensor:  # G_SS + lambda I, gathered afresh on each call
        matrix = block(kept, mu_s)
        matrix.diagonal().add_(lam)
        return matrix

    diagonal = g.diagonal().index_select(0, kept)  # of the uncentred Gram, also with an intercept
    lam = math.inf if math.isinf(damping) else float(damping * diagonal.mean()) if len(kept) else 0.0
    if math.isinf(lam) or len(kept) == 0 or len(removed) == 0:
        delta, solver = torch.zeros(weight.shape[0], len(kept), dtype=torch.float64, device=device), CHOLESKY
    else:
        rhs = (w_r @ block(removed, mu_r)).T  # D A = B with A symmetric  <=>  A D^T = B^T
        solution, solver = solve_symmetric(system, rhs)
        delta = solution.T
    bias = None
    if intercept:
        bias = w_r @ mu_r - delta @ mu_s
    return Compensation(delta, bias, lam, solver)


@dataclass
class ConsumedFit:
    """``consume_and_solve``'s result: the solution and the relative output errors before / after it."""

    solution: Compensation
    error_before: float
    error_after: float


def consume_and_solve(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
                      damping: float) -> ConsumedFit | None:
    """``solve_compensation`` without intercept, plus ``relative_errors``, in the Gram's own storage: the
    float64 ``gram`` is consumed (it becomes the factor of G_SS + lambda I in place), so the work space beyond
    it is G_RS, G_RR and the d_out x |S| solution, solved for chunks of output rows.

    The errors need no Gram once its blocks are taken: with B = W_R G_RS and D A = B (A = G_SS + lambda I),
    ``||D X_S - W_R X_R||^2 = tr(W_R G_RR W_R^T) - sum(B o D) - lambda ||D||^2`` (expand the square and use
    tr(D G_SS D^T) = tr(B D^T) - lambda ||D||^2). Needs a finite positive lambda (no pseudo-inverse fallback:
    the system is gone once factorised): returns None, the Gram untouched, when lambda is not (or nothing is
    removed or kept); the caller then uses ``solve_compensation``."""
    damping = check_damping(damping)
    if gram.dtype != torch.float64 or not gram.is_contiguous():
        raise HywiaError("consume_and_solve needs a contiguous float64 Gram (it is overwritten)")
    device = gram.device
    kept = kept.to(device=device, dtype=torch.long)
    removed = removed.to(device=device, dtype=torch.long)
    lam = float(damping * gram.diagonal().index_select(0, kept).mean()) if len(kept) else 0.0
    if not (0 < lam < math.inf) or len(removed) == 0:
        return None
    _check_finite(gram)
    reference = output_error(weight, gram)
    g_rs = gram.index_select(0, removed).index_select(1, kept)
    g_rr = gram.index_select(0, removed).index_select(1, removed)
    system = compact_square(gram, kept)  # G_SS over the start of the Gram's storage
    system.diagonal().add_(lam)
    factor = cholesky_in_place(system)
    if factor is None:
        raise HywiaError("reconstruction: the damped Gram matrix is not positive definite; raise --reconstruct-damping")
    delta = torch.empty(weight.shape[0], len(kept), dtype=torch.float64, device=device)
    before = cross = ridge_norm = 0.0
    for rows in _row_slices(weight.shape[0], len(kept)):
        w_r = weight.detach()[rows].index_select(1, removed.to(weight.device)).to(device=device, dtype=torch.float64)
        before += float(((w_r @ g_rr) * w_r).sum())
        b = w_r @ g_rs
        d = factor_solve(factor, b.T).T
        delta[rows] = d
        cross += float((b * d).sum())
        ridge_norm += float(d.pow(2).sum())
    after = max(before - cross - lam * ridge_norm, 0.0)
    relative = (lambda value: math.sqrt(value / reference)) if reference > 0 else (lambda value: 0.0)
    return ConsumedFit(Compensation(delta, None, lam, CHOLESKY), relative(before), relative(after))


ROW_CHUNK_BYTES = 2**26  # float64 rows of E (and of E G) held at a time by output_error / relative_errors


def _row_slices(d_out: int, d_in: int) -> list[slice]:
    step = max(1, ROW_CHUNK_BYTES // (8 * max(1, d_in)))
    return [slice(first, min(d_out, first + step)) for first in range(0, d_out, step)]


def output_error(error: torch.Tensor, gram: torch.Tensor, *, bias: torch.Tensor | None = None,
                 input_sum: torch.Tensor | None = None, count: int | None = None) -> float:
    """``||E X + b 1^T||_F^2`` from the Gram matrix: ``tr(E G E^T) + 2 b . (E s) + n ||b||^2``.

    ``error`` is E [d_out, d_in] (e.g. the weight minus its dense value), ``bias`` b, ``input_sum`` s = X 1.
    Output rows are independent terms: they are summed in chunks of ``ROW_CHUNK_BYTES``.
    """
    g = gram.to(torch.float64)  # no copy when already float64
    s = input_sum.to(device=g.device, dtype=torch.float64) if bias is not None else None
    total = 0.0
    for rows in _row_slices(*error.shape):
        e = error[rows].to(device=g.device, dtype=torch.float64)
        total += float(((e @ g) * e).sum())
        if bias is not None:
            b = bias[rows].to(device=g.device, dtype=torch.float64)
            total += 2 * float(b @ (e @ s)) + count * float(b @ b)
    return max(total, 0.0)


def relative_errors(weight: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor,
                    solution: Compensation, *, input_sum: torch.Tensor | None = None,
                    count: int | None = None) -> tuple[float, float]:
    """``||W_S X_S - W X|| / ||W X||`` (plain removal) and the same with ``W_S'`` (and ``b``) of ``solution``,
    accumulated over chunks of output rows."""
    g = gram.to(torch.float64)  # no copy when already float64
    kept, removed = kept.to(g.device), removed.to(g.device)
    reference = before = after = 0.0
    for rows in _row_slices(*weight.shape):
        w = weight.detach()[rows].to(device=g.device, dtype=torch.float64)
        reference += output_error(w, g)
        error = torch.zeros_like(w)
        error[:, removed] = -w[:, removed]
        before += output_error(error, g)
        error[:, kept] = solution.delta[rows].to(g.device)
        bias = solution.bias[rows] if solution.bias is not None else None
        after += output_error(error, g, bias=bias, input_sum=input_sum, count=count)
    if reference == 0:
        return 0.0, 0.0
    return math.sqrt(before / reference), math.sqrt(after / reference)
