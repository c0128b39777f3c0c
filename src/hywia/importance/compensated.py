"""The output error of removing a whole unit while the rest of its layer compensates (second order, coarse).

One output projection (``o_proj`` for attention units, ``down_proj`` for MLP channels): ``W`` [d_out, d_in],
its calibration inputs ``X`` [n, d_in], Gram ``G = X^T X``; unit g owns the contiguous input columns C_g.
Removing g and letting the kept columns absorb its contribution (the update the reconstruction stage
applies, ``reconstruct.ridge``) leaves the output error (Optimal Brain Surgeon for a block of columns)

    E_g = min_{D: D_C = -W_C} tr(D H D^T) = tr( W_C [H^-1]_CC^-1 W_C^T ),    H = G + lambda I,

lambda = damping * mean(diag(G)), the same relative ridge as the reconstruction. With an intercept (a bias
absorbs the removed inputs' means, as FLAP's compensation), G is replaced by the centred Gram
``G - n mu mu^T``. For one MLP channel (|C| = 1) this is ``||W_:,j||^2 / [H^-1]_jj``; with H diagonal it
reduces to ``||W_C||^2 ||X_C||^2``-like magnitude x activation scores (Wanda-sp, FLAP) that ignore how well
the other units can stand in for the removed one.

This is a *whole group at once* estimate: the error of removing the unit's columns jointly, including their
correlations with each other and with every kept column. Pure tensor functions; no model knowledge.
"""

from __future__ import annotations

import torch

from ..calibration.gram_space import all_finite, cholesky_in_place
from ..errors import HywiaError


CHUNK_BYTES = 2**27  # float64 work space per chunk (128 MiB): d_in^2 copies of a 7B MLP Gram are ~1 GiB each


def damped_factor(gram: torch.Tensor, damping: float, *, input_sum: torch.Tensor | None = None,
                  count: int | None = None, overwrite: bool = False) -> torch.Tensor:
    """The lower Cholesky factor L of ``H = G + lambda I`` (float64), lambda = ``damping`` * mean(diag(G));
    G centred when ``input_sum`` (= X^T 1) and ``count`` (= n) are given. With ``overwrite`` a float64
    ``gram`` is turned into the factor in place (the caller's Gram is consumed): no d_in^2 copy at all."""
    if damping <= 0:
        raise HywiaError(f"the compensated removal error needs a positive damping, got {damping}")
    h = gram if overwrite and gram.dtype == torch.float64 else gram.to(torch.float64, copy=True)
    if input_sum is not None:
        mu = input_sum.to(device=h.device, dtype=torch.float64) / max(1, count or 0)
        h.addr_(mu, mu, alpha=-(count or 0))  # centring, no n x n temporary
    if not all_finite(h):
        raise HywiaError("the calibration activations contain inf or NaN (run in float32 or bfloat16)")
    h.diagonal().add_(damping * float(h.diagonal().mean().clamp_min(1e-30)))
    factor = cholesky_in_place(h)
    if factor is None:
        raise HywiaError("the damped Gram matrix is not positive definite; raise --hywia-coarse-damping")
    return factor


def inverse_blocks(factor: torch.Tensor, size: int) -> torch.Tensor:
    """The diagonal blocks ``[H^-1]_CC`` [U, size, size] for the contiguous column blocks C of ``size``,
    without forming H^-1: with H = L L^T, ``[H^-1]_CC = (L^-1 E_C)^T (L^-1 E_C)``, solved for chunks of
    blocks at a time (d_in x chunk float64 work space, ``CHUNK_BYTES``). The solves use the whole factor:
    a trailing slice of it would be copied by the solver (a d_in^2 float64 copy), the extra flops are cheap."""
    d_in = factor.shape[0]
    if d_in % size:
        raise HywiaError(f"{d_in} input columns do not split into units of {size}")
    units = d_in // size
    per_chunk = max(1, CHUNK_BYTES // (8 * d_in * size))
    blocks = torch.empty(units, size, size, dtype=torch.float64, device=factor.device)
    for first in range(0, units, per_chunk):
        last = min(units, first + per_chunk)
        start = first * size
        rhs = torch.zeros(d_in, (last - first) * size, dtype=torch.float64, device=factor.device)
        rhs[start : start + rhs.shape[1]].fill_diagonal_(1.0)  # E_C
        columns = torch.linalg.solve_triangular(factor, rhs, upper=False)  # L^-1 E_C
        columns = columns.reshape(d_in, last - first, size).transpose(0, 1)  # [u, rows, size]
        blocks[first:last] = columns.transpose(1, 2) @ columns
    return blocks


def compensated_removal_error(weight: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """E_g = tr(W_C [H^-1]_CC^-1 W_C^T) for every unit g (contiguous column blocks), float64 -> float32.

    ``blocks`` = [H^-1]_CC [U, |C|, |C|] from :func:`inverse_blocks`; ``weight`` [d_out, d_in] with
    d_in = U * |C|. Units are taken in chunks (``CHUNK_BYTES`` of float64 weight columns at a time).
    """
    d_out, d_in = weight.shape
    units, size = blocks.shape[0], blocks.shape[1]
    if d_in != units * size:
        raise HywiaError(f"{d_in} input columns do not split into {units} units of {size}")
    per_chunk = max(1, CHUNK_BYTES // (8 * d_out * size))
    errors = torch.empty(units, dtype=torch.float32, device=blocks.device)
    for first in range(0, units, per_chunk):
        last = min(units, first + per_chunk)
        w = weight.detach()[:, first * size : last * size].to(device=blocks.device, dtype=torch.float64)
        w = w.reshape(d_out, last - first, size).permute(1, 2, 0)  # [u, |C|, d_out] = W_C^T
        solved = torch.linalg.solve(blocks[first:last], w)  # B^-1 W_C^T
        errors[first:last] = (w * solved).sum(dim=(1, 2)).float()
    return errors


def compensated_scores(weight: torch.Tensor, gram: torch.Tensor, num_units: int, damping: float, *,
                       input_sum: torch.Tensor | None = None, count: int | None = None,
                       overwrite: bool = False) -> torch.Tensor:
    """E_g of every unit of ``weight`` from its inputs' Gram matrix (``damped_factor`` -> ``inverse_blocks``
    -> ``compensated_removal_error``); ``overwrite`` consumes ``gram``. Peak work space: the factor (in
    place of the Gram when overwritten) plus ``CHUNK_BYTES``-sized chunks."""
    d_in = weight.shape[1]
    if d_in % num_units:
        raise HywiaError(f"{d_in} input columns do not split into {num_units} units")
    factor = damped_factor(gram, damping, input_sum=input_sum, count=count, overwrite=overwrite)
    blocks = inverse_blocks(factor, d_in // num_units)
    del factor
    return compensated_removal_error(weight, blocks)
