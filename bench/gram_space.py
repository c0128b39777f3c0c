"""Time and work space of the two float64 Gram solves at a real layer's shape, on the CPU (issue 13).

* sequential: ``importance.sequential.sequential_scores`` of one MLP down_proj (every input channel a unit)
  and of one attention o_proj (units of ``head`` columns): wall seconds.
* ridge: the reconstruction's solve for one down_proj with 20% of its channels removed, as
  ``reconstruct.layerwise`` calls it (``consume_and_solve`` where this checkout has it, else
  ``solve_compensation`` + ``relative_errors``): wall seconds and the process's peak resident memory above the
  Gram and the weight (each in a fresh process; run with MALLOC_MMAP_THRESHOLD_=65536 so freed blocks leave
  the resident set and the high-water mark counts live memory).

    MALLOC_MMAP_THRESHOLD_=65536 python bench/gram_space.py                      # LLaMA-7B down_proj shape
    git worktree add /tmp/before REV && MALLOC_MMAP_THRESHOLD_=65536 PYTHONPATH=/tmp/before/src \\
        python bench/gram_space.py                                                 # the same for an older REV
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))


def sequential_seconds(d_out: int, d_in: int, units: int, seed: int = 0) -> float:
    from hywia.importance.sequential import sequential_scores

    generator = torch.Generator().manual_seed(seed)
    gram = torch.zeros(d_in, d_in, dtype=torch.float64)
    x = torch.randn(2 * d_in, d_in, generator=generator, dtype=torch.float64)
    gram.addmm_(x.T, x)
    del x
    weight = torch.randn(d_out, d_in, generator=generator)
    started = time.perf_counter()
    sequential_scores(weight, gram, units, 0.1, overwrite=True)
    return time.perf_counter() - started


def ridge_row(d_out: int, d_in: int, removed_share: float, seed: int = 0) -> dict:
    from hywia.reconstruct import ridge

    generator = torch.Generator().manual_seed(seed)
    gram = torch.zeros(d_in, d_in, dtype=torch.float64)
    for _ in range(2):
        x = torch.randn(640, d_in, generator=generator, dtype=torch.float64)
        gram.addmm_(x.T, x)
        del x
    weight = (0.02 * torch.randn(d_out, d_in, generator=generator)).to(torch.bfloat16)
    order = torch.randperm(d_in, generator=generator)
    cut = d_in - round(removed_share * d_in)
    kept, removed = order[:cut].sort().values, order[cut:].sort().values
    base = peak_rss_mb()
    started = time.perf_counter()
    if hasattr(ridge, "consume_and_solve"):
        fit = ridge.consume_and_solve(weight, gram, kept, removed, 0.1)
        errors = (fit.error_before, fit.error_after)
    else:
        solution = ridge.solve_compensation(weight, gram, kept, removed, 0.1)
        errors = ridge.relative_errors(weight, gram, kept, removed, solution)
    return {"seconds": round(time.perf_counter() - started, 2), "work_space_mb": round(peak_rss_mb() - base),
            "gram_mb": round(d_in * d_in * 8 / 2**20), "errors": [round(e, 6) for e in errors]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=4096, help="d_out of down_proj, d_in of o_proj")
    parser.add_argument("--d-mlp", type=int, default=11008, help="down_proj input channels (ridge part)")
    parser.add_argument("--d-mlp-sequential", type=int, default=4096,
                        help="MLP width of the sequential part (11008 takes minutes on 2 cores)")
    parser.add_argument("--head", type=int, default=128)
    parser.add_argument("--part", choices=("all", "sequential", "ridge"), default="all")
    args = parser.parse_args(argv)
    rows = {}
    if args.part in ("all", "sequential"):
        rows["sequential_mlp_s"] = round(sequential_seconds(1024, args.d_mlp_sequential, args.d_mlp_sequential), 2)
        rows["sequential_attention_s"] = round(sequential_seconds(args.d_model // 2, args.d_model // 2,
                                                                  args.d_model // 2 // args.head), 2)
    if args.part in ("all", "ridge"):
        if args.part == "all":  # a fresh process: the high-water mark of this one already holds the part above
            command = [sys.executable, __file__, "--part", "ridge", "--d-model", str(args.d_model), "--d-mlp", str(args.d_mlp)]
            rows["ridge"] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["ridge"]
        else:
            rows["ridge"] = ridge_row(args.d_model, args.d_mlp, 0.2)
    rows["torch_threads"] = torch.get_num_threads()
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
