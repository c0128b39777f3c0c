"""The small factorisations inside the sequential coarse score's steps, on the GPU: which formulation is fastest?

Per step the score factors a small SPD block and applies its inverse: for MLP channels one |C_B| x |C_B| block
(|C_B| = 43 at the 7B shape) against [P_CB,: | W'_CB^T] (43 x 15,104 float64); for attention heads every
head's 128 x 128 diagonal block of P (batched, 32 at the 7B shape) against its 128 x 128 Gram of W'. Prints
milliseconds per call (CUDA events, median of ``--repeats``) of each formulation, and their largest
difference from the first one (the one the code used before).

    python bench/small_solves.py
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from hywia.reconstruct.ridge import factor_solve


def spd(batch: int, size: int, device) -> torch.Tensor:
    a = torch.randn(batch, size, 2 * size, dtype=torch.float64, device=device)
    return a @ a.mT / (2 * size) + 0.1 * torch.eye(size, dtype=torch.float64, device=device)


def timed(function, repeats: int) -> tuple[float, torch.Tensor]:
    out = function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    torch.manual_seed(0)
    rows = {}
    # attention: e_j = sum([P]_jj^-1 o G_j) over 32 heads of 128
    blocks, grams = spd(32, 128, device), spd(32, 128, device)
    eye = torch.eye(128, dtype=torch.float64, device=device)
    variants = {
        "cholesky_inverse": lambda: (torch.cholesky_inverse(torch.linalg.cholesky_ex(blocks).L) * grams).sum((1, 2)),
        "triangular_inverse": lambda: _tri(blocks, grams, eye),
        "linalg_inv": lambda: (torch.linalg.inv_ex(blocks).inverse * grams).sum((1, 2)),
        "cholesky_solve": lambda: torch.cholesky_solve(grams, torch.linalg.cholesky_ex(blocks).L).diagonal(
            dim1=1, dim2=2).sum(1),
    }
    reference = None
    for name, function in variants.items():
        ms, out = timed(function, args.repeats)
        reference = out if reference is None else reference
        rows[f"attention {name}"] = {"ms": round(ms, 3), "max_rel_diff": float(((out - reference).abs() / reference.abs()).max())}
    # MLP: one 43 x 43 block against 43 x 15,104 right-hand sides
    block, rhs = spd(1, 43, device)[0], torch.randn(43, 15104, dtype=torch.float64, device=device)
    variants = {
        "cholesky_ex + cholesky_solve": lambda: torch.cholesky_solve(rhs, torch.linalg.cholesky_ex(block).L),
        "cholesky_ex + two triangular solves": lambda: factor_solve(torch.linalg.cholesky_ex(block).L, rhs),
        "inv_ex @ rhs": lambda: torch.linalg.inv_ex(block).inverse @ rhs,
        "cholesky_ex only": lambda: torch.linalg.cholesky_ex(block).L,
        "cholesky_ex batched (1)": lambda: torch.linalg.cholesky_ex(block[None]).L,
    }
    reference = None
    for name, function in variants.items():
        ms, out = timed(function, args.repeats)
        comparable = out.shape == rhs.shape
        reference = out if reference is None else reference
        diff = float(((out - reference).abs().max() / reference.abs().max())) if comparable else None
        rows[f"mlp {name}"] = {"ms": round(ms, 3), "max_rel_diff": diff}
    for name, row in rows.items():
        print(f"| {name} | {row['ms']} | {row['max_rel_diff']} |")
    print(json.dumps(rows))
    return 0


def _tri(blocks, grams, eye):
    inverse_factor = torch.linalg.solve_triangular(torch.linalg.cholesky_ex(blocks).L, eye, upper=False)
    return (inverse_factor.mT @ inverse_factor * grams).sum((1, 2))


if __name__ == "__main__":
    raise SystemExit(main())
