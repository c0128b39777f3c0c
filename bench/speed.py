"""Dense vs pruned efficiency (parameters, MACs, peak memory, prefill / decode tokens/s) -> BENCHMARKS.md.

Example (GPU):
    python bench/speed.py --model /path/pruned --baseline /path/dense --device cuda --dtype bfloat16
CPU check of the embedded SmolLM2 vs a 20 % prune:
    hywia prune --ratio 0.2 --out /tmp/smol20 --quiet
    python bench/speed.py --model /tmp/smol20 --baseline default --device cpu --label smol20-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchlib import record

from hywia.evaluate.speed import SpeedConfig, bench_models, speed_table, split_modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, nargs="+", help="pruned model(s) (folder, .gguf, hub id)")
    parser.add_argument("--baseline", default="default", help="dense model; 'default' = embedded SmolLM2-135M")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", dest="compile_modes", nargs="?", const="reduce-overhead", default=None,
                        help="also measure the compiled static-cache decode (as `hywia bench-speed --compile`)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--label", default=None, help="section key in BENCHMARKS.md (default: from the model and device)")
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    config = SpeedConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                         batch_sizes=[int(b) for b in args.batch_sizes.split(",")], repeats=args.repeats,
                         warmup=args.warmup, compile_modes=split_modes(args.compile_modes), compile_backend=args.compile_backend)
    baseline = None if args.baseline == "default" else args.baseline
    start, load_before = time.time(), os.getloadavg()
    pruned = [("pruned", model) for model in args.model]
    results = bench_models([("dense", baseline)] + pruned, config, dtype=args.dtype, device=args.device)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": config.to_dict(), "models": results}, handle, indent=1)
    label = args.label or f"{args.model[0].rstrip('/').split('/')[-1]}-{args.device}"
    details = (f"prompt {config.prompt_len} tokens, {config.new_tokens} decoded tokens, warm-up {config.warmup}, "
               f"median of {config.repeats}. 1-min load average before / after: {load_before[0]:.2f} / "
               f"{os.getloadavg()[0]:.2f} (other jobs on the machine disturb CPU timings).")
    record("speed", label, "Speed", start, details, speed_table(results), write=not args.no_write)

if __name__ == "__main__":
    main()
