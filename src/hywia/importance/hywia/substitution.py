"""What a unit's input columns are replaced by when it is gated off, if the reconstruction will follow.

HyWIA's soft masks scale a unit's input slice of the output projection (``gates``). Multiplying by zero
models removal *without* compensation; but the pipeline's reconstruction (``reconstruct.ridge``) lets the
kept columns absorb the removed ones: W_S' = W_S + W_R G_RS (G_SS + lambda I)^-1. That is the same output as
keeping W and replacing the removed inputs by their ridge prediction from the kept inputs,

    h_R  ->  A h_S,    A = G_RS (G_SS + lambda I)^-1,      lambda = damping * mean(diag(G_SS)),

so a compensated gate is  h~ = m * h + (1 - m) * (P h),  with P built around the current kept set S:

* removed columns R:  (P h)_R = A h_S  (exactly the reconstruction's output when m is the hard selection);
* kept unit C in S:   (P h)_C = h_C - K_CC^-1 (K h_S)_C,  K = (G_SS + lambda I)^-1,  which equals the ridge
  prediction of h_C from the rest of S (block inverse), i.e. what would stand in for C if it left too.

Then the fusion's loss gradient for a mask measures the loss change of swapping the unit for its
compensated stand-in, the change the pruned and reconstructed model really sees. Pure tensor functions.
"""

from __future__ import annotations

import torch

from ...calibration.gram_space import diagonal_blocks
from ...errors import HywiaError


def substitution_matrix(gram: torch.Tensor, kept_units: torch.Tensor, unit_size: int, damping: float) -> torch.Tensor:
    """P [d_in, d_in] (float32, on ``gram``'s device) of the module docstring for the kept units ``kept_units``
    (indices of units of ``unit_size`` contiguous columns); ``damping`` > 0 as ``--reconstruct-damping``."""
    if damping <= 0:
        raise HywiaError(f"compensated gates need a positive reconstruction damping, got {damping}")
    d_in = gram.shape[0]
    g = gram.to(torch.float64)
    offsets = torch.arange(unit_size, device=g.device)
    kept = (kept_units.to(g.device)[:, None] * unit_size + offsets).reshape(-1).sort().values
    is_kept = torch.zeros(d_in, dtype=torch.bool, device=g.device)
    is_kept[kept] = True
    removed = (~is_kept).nonzero().squeeze(1)
    system = g[kept][:, kept]
    system.diagonal().add_(damping * float(system.diagonal().mean().clamp_min(1e-30)))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(system))  # K
    p = torch.zeros(d_in, d_in, dtype=torch.float64, device=g.device)
    if len(removed):
        p[removed.unsqueeze(1), kept] = g[removed][:, kept] @ inverse  # A
    units = len(kept) // unit_size
    blocks = diagonal_blocks(inverse, unit_size)  # K_CC
    rows = torch.linalg.solve(blocks, inverse.view(units, unit_size, -1))  # K_CC^-1 K_C,S  [u, size, |S|]
    p[kept.unsqueeze(1), kept] = torch.eye(len(kept), dtype=torch.float64, device=g.device) - rows.reshape(len(kept), -1)
    return p.float()
