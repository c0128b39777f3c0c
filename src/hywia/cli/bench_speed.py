"""``hywia bench-speed``: parameters, MACs, peak memory and tokens/s of a model, next to a dense baseline."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_model_args


def add_parser(sub) -> None:
    bench = sub.add_parser("bench-speed", help="parameters, MACs, memory and tokens/s, pruned vs dense")
    add_model_args(bench)
    bench.add_argument("--baseline", default=None,
                       help="dense model to compare with: folder, .gguf, hub id or 'default' (embedded SmolLM2)")
    bench.add_argument("--prompt-len", type=int, default=128, help="prefill length in tokens (default 128)")
    bench.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run (default 32)")
    bench.add_argument("--batch-sizes", default="1,32", help="decode batch sizes (default 1,32)")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats, the median is reported (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    bench.add_argument("--compile", dest="compile_modes", nargs="?", const="reduce-overhead", default=None,
                       metavar="MODE[,MODE]",
                       help="also measure decode on a static KV cache with torch.compile, once per mode "
                            "(default, reduce-overhead = CUDA graphs (when given alone), max-autotune, "
                            "max-autotune-no-cudagraphs; e.g. reduce-overhead,max-autotune); off unless given")
    bench.add_argument("--compile-backend", default="inductor",
                       help="torch.compile backend (default inductor; 'eager' only checks the code path)")
    bench.add_argument("--json", default=None, help="also write the measurements to this JSON file")


def run(args) -> int:
    from ..evaluate.speed import SpeedConfig, bench_models, speed_table, split_modes

    config = SpeedConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                         batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
                         repeats=args.repeats, warmup=args.warmup, compile_modes=split_modes(args.compile_modes),
                         compile_backend=args.compile_backend)
    baseline = None if args.baseline == "default" else args.baseline
    specs = ([("dense", baseline)] if args.baseline else []) + [("model", args.model)]
    measurements = bench_models(specs, config, dtype=args.dtype, device=args.device)
    print(speed_table(measurements))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.to_dict(), "models": measurements}, indent=1))
        print(f"measurements written to {args.json}")
    return 0
