"""The compensated removal error taken greedily, a few units at a time (sequential Optimal Brain Surgeon).

``compensated`` scores every unit alone: ``E_g = tr(W_C [H^-1]_CC^-1 W_C^T)`` with every other unit kept. But
the units are removed together, and what the kept ones can absorb depends on what else goes: two channels
that copy each other each look cheap alone, yet removing both loses their signal. The sequential score
follows the removal as it happens (notation of ``importance.compensated``; H = G + lambda I):

    repeat until no unit is left:
        e_j = tr(W'_Cj [P]_CjCj^-1 W'_Cj^T)  for every unit j still present      (P = H^-1 over the kept set)
        B   = the ``block`` units with the smallest e_j;  C_B their columns
        score_j = E + e_j  for j in B;   E += tr(W'_CB [P]_CBCB^-1 W'_CB^T)       (their joint removal error)
        W' <- W' - W'_CB [P]_CBCB^-1 P_CB,:       (the kept columns absorb the removed ones: OBS update)
        P  <- P  - P_:,CB [P]_CBCB^-1 P_CB,:      (inverse of H restricted to the kept columns)

After any number of steps, E is the joint error ``min_{D: D_R = -W_R} tr(D H D^T)`` of everything removed so
far (R), the error the reconstruction stage then realises (``reconstruct.ridge``, same ridge). A unit's score
is the running error at the step it goes (plus its own e_j within the step), so the scores increase along
the removal order and keeping the top-k by score keeps exactly the units the greedy removal would keep.
With ``block = 1`` this is exact greedy OBS; larger blocks trade a little of it for speed (n / block steps
of an n x n rank-|C_B| update). Pure tensor functions; no model knowledge.
"""

from __future__ import annotations

import math

import torch

from ..calibration.gram_space import compact_rows, compact_square, diagonal_blocks
from ..errors import HywiaError
from .compensated import damped_factor

STEPS = 256  # default: about this many greedy steps per layer (block = ceil(units / STEPS))
# Once at most this share of the units held is still present, the removed rows and columns are dropped from
# the work space (in place): every later rank-|C_B| update touches only what is left. Removed entries are
# zero, so this changes no value. Repeated every time a quarter of the held units is gone, the updates move
# 43% of the bytes of an uncompacted removal (57% when compacting at half; bytes bound these steps on a GPU);
# each compaction costs about one update's traffic and one device sync.
COMPACT_AT = 0.75


def default_block(num_units: int, steps: int = STEPS) -> int:
    return max(1, math.ceil(num_units / steps))


def unit_errors(weight_t: torch.Tensor, inverse: torch.Tensor, present: torch.Tensor, size: int) -> torch.Tensor:
    """e_j = tr(W'_Cj [P]_CjCj^-1 W'_Cj^T) of every present unit (inf for removed ones); ``weight_t`` is
    W'^T [d_in, d_out], ``inverse`` P [d_in, d_in], ``present`` a bool mask over units.

    W' is read once, by a reduction (no gathered copy of it: at 7B scale a copy moved as many bytes per step
    as the update of the inverse): row norms for single columns, the small Grams W'_Cj W'_Cj^T for blocks, so
    that e_j = sum([P]_CjCj^-1 o W'_Cj W'_Cj^T) needs only |C_j| x |C_j| inverses.

    Blocks: [P]_CjCj^-1 = L^-T L^-1 with L^-1 from one batched triangular solve (cuBLAS), not
    ``torch.cholesky_inverse``, which on CUDA inverts a batch one block at a time (MAGMA's potri, or cuSOLVER's
    potrs against an identity): in a 7B profile about as much GPU time as the rank updates. Removed units'
    blocks (zero) are factored as identities and masked after: no ``nonzero``, so no step waits on the host."""
    units = present.numel()
    if size == 1:
        errors = torch.linalg.vector_norm(weight_t, dim=1).square_().div_(inverse.diagonal())
        return errors.masked_fill_(~present, math.inf)  # removed units: 0 / 0
    eye = torch.eye(size, dtype=inverse.dtype, device=inverse.device)
    blocks = torch.where(present[:, None, None], diagonal_blocks(inverse, size), eye)  # [u, s, s]
    w = weight_t.view(units, size, -1)
    grams = w @ w.mT  # [u, s, s]
    inverse_factors = torch.linalg.solve_triangular(torch.linalg.cholesky_ex(blocks).L, eye.expand_as(blocks),
                                                    upper=False)  # L^-1
    errors = ((inverse_factors @ grams) * inverse_factors).sum(dim=(1, 2))  # tr(L^-1 G L^-T)
    return errors.masked_fill_(~present, math.inf)


def sequential_scores(weight: torch.Tensor, gram: torch.Tensor, num_units: int, damping: float, *,
                      block: int | None = None, input_sum: torch.Tensor | None = None, count: int | None = None,
                      overwrite: bool = False) -> torch.Tensor:
    """Scores of every unit of ``weight`` [d_out, d_in] (contiguous column blocks) from the greedy compensated
    removal of the module docstring, float32; ``block`` units leave per step (default ``default_block``).
    ``overwrite`` consumes ``gram``. Work space: H^-1 and W'^T in float64 (d_in^2 + d_in d_out)."""
    d_out, d_in = weight.shape
    if d_in % num_units:
        raise HywiaError(f"{d_in} input columns do not split into {num_units} units")
    size = d_in // num_units
    block = block or default_block(num_units)
    factor = damped_factor(gram, damping, input_sum=input_sum, count=count, overwrite=overwrite)
    inverse = torch.cholesky_inverse(factor)
    del factor, gram  # overwritten: the factor is the Gram's storage; freed here if the caller handed it over
    if not inverse.is_contiguous():  # LAPACK's column-major result; symmetric, so its transpose is the same matrix
        inverse = inverse.mT if inverse.mT.is_contiguous() else inverse.contiguous()
    weight_t = weight.detach().to(device=inverse.device, dtype=torch.float64).T.contiguous()
    alive = torch.arange(num_units, device=inverse.device)  # the original unit of each row block still held
    present = torch.ones(num_units, dtype=torch.bool, device=inverse.device)
    scores = torch.empty(num_units, dtype=torch.float64, device=inverse.device)
    removed_error = torch.zeros((), dtype=torch.float64, device=inverse.device)  # on the device: no sync per step
    remaining = num_units
    offsets = torch.arange(size, device=inverse.device)
    while remaining:
        if remaining <= COMPACT_AT * len(alive):
            keep = present.nonzero().squeeze(1)
            columns = (keep[:, None] * size + offsets).reshape(-1)
            inverse, weight_t = compact_square(inverse, columns), compact_rows(weight_t, columns)
            alive, present = alive[keep], present[keep]
        d_held = inverse.shape[0]
        errors = unit_errors(weight_t, inverse, present, size)
        take = min(block, remaining)
        smallest, chosen = torch.topk(errors, take, largest=False)
        scores.index_copy_(0, alive[chosen], smallest + removed_error)
        columns = chosen if size == 1 else (chosen[:, None] * size + offsets).reshape(-1)
        # [P_CB,: | W'_CB^T]: one triangular solve serves the update of the inverse and of W'
        rows = torch.cat((inverse.index_select(0, columns), weight_t.index_select(0, columns)), dim=1)
        across = rows[:, :d_held]  # P_CB,: [|C_B|, d_held]
        factor = torch.linalg.cholesky_ex(across[:, columns]).L  # [P]_CBCB; no per-step error check: see the end
        solved = torch.cholesky_solve(rows, factor)
        removed_error += (rows[:, d_held:] * solved[:, d_held:]).sum()
        weight_t.addmm_(across.T, solved[:, d_held:], alpha=-1)  # in place: no d_in^2 temporary
        inverse.addmm_(across.T, solved[:, :d_held], alpha=-1)
        weight_t.index_fill_(0, columns, 0.0)
        inverse.index_fill_(0, columns, 0.0).index_fill_(1, columns, 0.0)
        present.index_fill_(0, chosen, False)  # (present[chosen] = False copies a host tensor over each step)
        remaining -= take
    if not torch.isfinite(scores).all():
        raise HywiaError("sequential coarse score: a removal step was not positive definite; raise --hywia-coarse-damping")
    return scores.float()
