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

from ..errors import HywiaError


def damped_inverse(gram: torch.Tensor, damping: float, *, input_sum: torch.Tensor | None = None,
                   count: int | None = None) -> torch.Tensor:
    """``(G + lambda I)^-1`` in float64, lambda = ``damping`` * mean(diag(G)); G centred when ``input_sum``
    (= X^T 1) and ``count`` (= n) are given."""
    if damping <= 0:
        raise HywiaError(f"the compensated removal error needs a positive damping, got {damping}")
    g = gram.to(torch.float64)
    if input_sum is not None:
        mu = input_sum.to(device=g.device, dtype=torch.float64) / max(1, count or 0)
        g = g - (count or 0) * torch.outer(mu, mu)
    if not torch.isfinite(g).all():
        raise HywiaError("the calibration activations contain inf or NaN (run in float32 or bfloat16)")
    lam = damping * float(g.diagonal().mean().clamp_min(1e-30))
    h = g.clone() if g is gram else g  # d_in^2 float64 matrices are large: no identity, no extra copies
    h.diagonal().add_(lam)
    factor = torch.linalg.cholesky(h)
    del h
    return torch.cholesky_inverse(factor)


def compensated_removal_error(weight: torch.Tensor, inverse: torch.Tensor, num_units: int) -> torch.Tensor:
    """E_g = tr(W_C [H^-1]_CC^-1 W_C^T) for every unit g (contiguous column blocks), float64 -> float32.

    ``inverse`` = H^-1 from :func:`damped_inverse`; ``weight`` [d_out, d_in] with d_in = num_units * |C|.
    """
    d_out, d_in = weight.shape
    if d_in % num_units:
        raise HywiaError(f"{d_in} input columns do not split into {num_units} units")
    size = d_in // num_units
    units = torch.arange(num_units, device=inverse.device)
    blocks = inverse.reshape(num_units, size, num_units, size)[units, :, units, :]  # [U, |C|, |C|]
    w = weight.detach().to(device=inverse.device, dtype=torch.float64).reshape(d_out, num_units, size).transpose(0, 1)
    solved = torch.linalg.solve(blocks, w.transpose(1, 2))  # [U, |C|, d_out] = B^-1 W_C^T
    return (w.transpose(1, 2) * solved).sum(dim=(1, 2)).float()
