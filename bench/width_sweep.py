"""Which pruned widths do the GPU's matrix products run well at? Decode-shaped products over a range of widths.

A decode step is a chain of thin products ``x @ W.T`` (x: batch x in) whose cost is reading W. The compiled
probe (``compiled_probe.py``) found that cuBLAS reaches 69% of the bandwidth floor at LLaMA-7B's dense shapes but
57% at the halved ones, and that the 20% shapes (26 heads, 8,832 channels) gain 6% for 19% fewer bytes. This
sweep times one product kind over many widths, so the allocator's ``--round-to auto`` can keep widths where the
kernels are fast:

* ``mlp_in``  (gate / up): in = hidden, out = w;   ``mlp_out`` (down): in = w, out = hidden;
* ``attn_in`` (q, or k / v): in = hidden, out = w; ``attn_out`` (o): in = w, out = hidden;

``w`` runs over ``--widths`` (start:stop:step, inclusive). Each width is timed as ``--copies`` distinct weights
(together far larger than L2) chained in one CUDA graph, replayed ``--replays`` times (median); reported as
microseconds per product, GB/s and the fraction of ``--bandwidth``. ``--backend triton`` times the product
through ``torch.compile(mode="max-autotune-no-cudagraphs")`` (Triton templates autotuned per shape) instead
of cuBLAS, for the widths of ``--widths`` only (each compiles and autotunes).

    python bench/width_sweep.py --kinds mlp_in mlp_out --widths 8192:11008:64 --batch-sizes 1 32 \
        --json $OUT/width_sweep_mlp.json
    python bench/width_sweep.py --kinds attn_in attn_out --widths 2048:4096:128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import graph_replay_seconds  # noqa: E402

KINDS = ("mlp_in", "mlp_out", "attn_in", "attn_out")


def parse_widths(spec: str) -> list[int]:
    """``start:stop:step`` (stop included) or a comma-separated list."""
    if ":" in spec:
        start, stop, step = (int(part) for part in spec.split(":"))
        return list(range(start, stop + 1, step))
    return [int(part) for part in spec.split(",")]


def product_shape(kind: str, width: int, hidden: int) -> tuple[int, int]:
    """(out_features, in_features) of the product ``kind`` at ``width``."""
    return (width, hidden) if kind.endswith("_in") else (hidden, width)


def linear_function(backend: str):
    if backend == "cublas":
        return F.linear
    return torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)


@torch.inference_mode()
def time_product(out_features: int, in_features: int, batch: int, copies: int, replays: int, linear) -> float:
    """Median seconds of one product, from ``copies`` distinct weights chained in one replayed CUDA graph."""
    weights = [torch.randn(out_features, in_features, dtype=torch.bfloat16, device="cuda") * 0.02
               for _ in range(copies)]
    x = torch.randn(batch, in_features, dtype=torch.bfloat16, device="cuda")
    # three warm-ups: for Triton, the compile and autotune happen there, outside the capture
    seconds = graph_replay_seconds(lambda: [linear(x, w) for w in weights], warmups=3, replays=replays)
    del weights
    return seconds / copies


def sweep(args) -> list[dict]:
    linear = linear_function(args.backend)
    if args.backend == "triton":
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4096)
    rows = []
    for kind in args.kinds:
        for batch in args.batch_sizes:
            for width in parse_widths(args.widths):
                out_features, in_features = product_shape(kind, width, args.hidden)
                seconds = time_product(out_features, in_features, batch, args.copies, args.replays, linear)
                read = out_features * in_features * 2
                row = {"kind": kind, "batch": batch, "width": width, "backend": args.backend,
                       "us": seconds * 1e6, "gb_per_s": read / seconds / 1e9,
                       "of_bandwidth": read / seconds / (args.bandwidth * 1e12)}
                rows.append(row)
                print(f"| {kind} | {batch} | {width} | {args.backend} | {row['us']:.1f} | {row['gb_per_s']:,.0f} | "
                      f"{row['of_bandwidth']:.0%} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--widths", default="8192:11008:64", help="start:stop:step (stop included) or a,b,c")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--copies", type=int, default=24, help="distinct weights per graph (beyond L2)")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--bandwidth", type=float, default=4.8, help="GPU memory bandwidth, TB/s (H200: 4.8)")
    parser.add_argument("--backend", default="cublas", choices=("cublas", "triton"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("width_sweep needs a CUDA GPU")
    print("| kind | batch | width | backend | us / product | GB/s | of bandwidth |\n|---|---:|---:|---|---:|---:|---:|")
    rows = sweep(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
