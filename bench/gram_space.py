"""Time and work space of the two float64 Gram solves at a real layer's shape, on the CPU (issue 13).

* sequential: ``importance.sequential.sequential_scores`` of one MLP down_proj (every input channel a unit)
  and of one attention o_proj (units of ``head`` columns): wall seconds.
On a GPU (``--device cuda``) the work space is ``torch.cuda.max_memory_allocated`` above what the inputs hold,
and ``--profile`` prints the sequential score's most expensive operators (``torch.profiler``).

* ridge: the reconstruction's solve for one down_proj with 20% of its channels removed, as
  ``reconstruct.layerwise`` calls it (``consume_and_solve`` where this checkout has it, else
  ``solve_compensation`` + ``relative_errors``): wall seconds and the process's peak resident memory above the
  Gram and the weight (each in a fresh process; run with MALLOC_MMAP_THRESHOLD_=65536 so freed blocks leave
  the resident set and the high-water mark counts live memory).

    MALLOC_MMAP_THRESHOLD_=65536 python bench/gram_space.py                      # LLaMA-7B down_proj shape
    python bench/gram_space.py --device cuda --d-mlp-sequential 11008 --profile     # on a GPU: time, peak
                                                                 # allocated work space, the top kernels
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


def peak_mb(device: torch.device) -> float:
    """The process's peak resident memory (CPU) or the device's peak allocated memory (GPU), in MB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))


def random_gram(d_in: int, tokens: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    gram = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
    for first in range(0, tokens, 640):
        x = torch.randn(min(640, tokens - first), d_in, generator=generator, dtype=torch.float64).to(device)
        gram.addmm_(x.T, x)
        del x
    return gram


def sequential_seconds(d_out: int, d_in: int, units: int, device: torch.device, profile: bool = False,
                       seed: int = 0) -> float:
    from hywia.importance.sequential import sequential_scores

    generator = torch.Generator().manual_seed(seed)
    gram = random_gram(d_in, 2 * d_in, generator, device)
    weight = torch.randn(d_out, d_in, generator=generator).to(device)
    if profile:
        with torch.profiler.profile() as profiler:
            sequential_scores(weight, gram.clone(), units, 0.1, overwrite=True)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=key, row_limit=12), file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    sequential_scores(weight, gram, units, 0.1, overwrite=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def ridge_row(d_out: int, d_in: int, removed_share: float, device: torch.device, seed: int = 0) -> dict:
    from hywia.reconstruct import ridge

    generator = torch.Generator().manual_seed(seed)
    gram = random_gram(d_in, 1280, generator, device)
    weight = (0.02 * torch.randn(d_out, d_in, generator=generator)).to(torch.bfloat16).to(device)
    order = torch.randperm(d_in, generator=generator)
    cut = d_in - round(removed_share * d_in)
    kept, removed = order[:cut].sort().values, order[cut:].sort().values
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = peak_mb(device)
    started = time.perf_counter()
    if hasattr(ridge, "consume_and_solve"):
        fit = ridge.consume_and_solve(weight, gram, kept, removed, 0.1)
        errors = (fit.error_before, fit.error_after)
    else:
        solution = ridge.solve_compensation(weight, gram, kept, removed, 0.1)
        errors = ridge.relative_errors(weight, gram, kept, removed, solution)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"seconds": round(time.perf_counter() - started, 2), "work_space_mb": round(peak_mb(device) - base),
            "gram_mb": round(d_in * d_in * 8 / 2**20), "errors": [round(e, 6) for e in errors]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=4096, help="d_out of down_proj, d_in of o_proj")
    parser.add_argument("--d-mlp", type=int, default=11008, help="down_proj input channels (ridge part)")
    parser.add_argument("--d-mlp-sequential", type=int, default=4096,
                        help="MLP width of the sequential part (11008 takes minutes on 2 cores)")
    parser.add_argument("--head", type=int, default=128)
    parser.add_argument("--d-out-sequential", type=int, default=1024, help="down_proj outputs of the sequential part")
    parser.add_argument("--part", choices=("all", "sequential", "ridge"), default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="print the sequential score's top operators (stderr)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = {"device": str(device)}
    if args.part in ("all", "sequential"):
        rows["sequential_mlp_s"] = round(sequential_seconds(args.d_out_sequential, args.d_mlp_sequential,
                                                            args.d_mlp_sequential, device, args.profile), 2)
        rows["sequential_attention_s"] = round(sequential_seconds(args.d_model // 2, args.d_model // 2,
                                                                  args.d_model // 2 // args.head, device), 2)
    if args.part in ("all", "ridge"):
        if args.part == "all":  # a fresh process: the high-water mark of this one already holds the part above
            command = [sys.executable, __file__, "--part", "ridge", "--d-model", str(args.d_model), "--d-mlp", str(args.d_mlp),
                       "--device", args.device]
            rows["ridge"] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["ridge"]
        else:
            rows["ridge"] = ridge_row(args.d_model, args.d_mlp, 0.2, device)
    rows["torch_threads"] = torch.get_num_threads()
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
