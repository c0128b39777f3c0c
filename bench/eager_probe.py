"""Why is a pruned model's eager decode slower than the dense one's? CPU issue time vs GPU time per step.

All models are loaded at once and measured in interleaved rounds (dense, pruned A, pruned B, dense, ...), so
drift of the machine (clocks, other tenants) hits every model alike. Per decode step (eager forward on
transformers' dynamic cache, greedy argmax, as ``hywia.evaluate.speed``):

* ``issue ms``: wall time of the Python loop before the final synchronisation (what the CPU spends
  launching the step's kernels), ``step ms``: wall time including the synchronisation;
* ``gpu ms``: the CUDA kernel time of one step and ``kernels``: kernels launched per step, from
  ``torch.profiler`` on one extra round, with the ops that cost the most CPU time per step.

If ``issue ~ step`` the decode is CPU-bound (launch overhead): a model launching the same kernels cannot be
slower unless its per-launch cost is higher. If ``gpu`` of the pruned model exceeds the dense one's, its
kernels are slower (shapes hitting slow kernels).

    source bench/device_env.sh && python bench/eager_probe.py /tmp/scale/llama-7b /tmp/scale/llama-7b-hywia-0.2 \
        --device cuda --json $OUT/eager_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from hywia.evaluate.speed import _prefill_then_decode
from hywia.models.io import load_model


def decode(model, ids: torch.Tensor, steps: int) -> tuple[float, float]:
    """(issue seconds, total seconds) of ``steps`` greedy eager decode steps after an untimed prefill."""
    _, total, issued = _prefill_then_decode(model, ids, steps)
    return issued, total


def profile(model, ids: torch.Tensor, steps: int, top: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiler

    with run_profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        decode(model, ids, steps)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in kernels)
    cpu_ops = sorted((e for e in events if e.device_type.name == "CPU"), key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "gpu_ms_per_step": gpu_us / 1000 / steps,
        "kernels_per_step": launches / steps,
        "cpu_ops": [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in cpu_ops],
        "kernel_ops": [{"kernel": e.key[:90], "ms_per_step": e.self_device_time_total / 1000 / steps,
                        "calls_per_step": e.count / steps}
                       for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders; the first is the dense reference")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    models = [load_model(path, dtype=args.dtype, device=args.device).model for path in args.models]
    vocab = models[0].get_input_embeddings().weight.shape[0]
    results: dict = {"models": args.models, "batches": {}}
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        ids = torch.randint(0, vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
        ids = ids.to(args.device)
        for model in models:  # warm-up
            decode(model, ids, 4)
        timings = [[] for _ in models]
        for _ in range(args.rounds):
            for index, model in enumerate(models):
                timings[index].append(decode(model, ids, args.steps))
        entry = []
        for path, model, runs in zip(args.models, models, timings):
            issue = statistics.median(r[0] for r in runs) / args.steps * 1000
            step = statistics.median(r[1] for r in runs) / args.steps * 1000
            entry.append({"model": path, "issue_ms": issue, "step_ms": step,
                          "step_ms_all": [r[1] / args.steps * 1000 for r in runs],
                          **profile(model, ids, args.steps, args.top)})
        results["batches"][str(batch)] = entry
        print(f"\nbatch {batch}: per decode step (median of {args.rounds} interleaved rounds of {args.steps} steps)")
        print(f"{'model':50s} {'issue ms':>9s} {'step ms':>8s} {'gpu ms':>7s} {'kernels':>8s}")
        for e in entry:
            print(f"{e['model'][-50:]:50s} {e['issue_ms']:9.2f} {e['step_ms']:8.2f} {e['gpu_ms_per_step']:7.2f} "
                  f"{e['kernels_per_step']:8.0f}")
        for e in entry:
            print(f"  {e['model'][-40:]}: top CPU ops " + ", ".join(
                f"{op['op']} {op['self_cpu_ms_per_step']:.2f} ms x{op['calls_per_step']:.0f}" for op in e["cpu_ops"][:6]))
            print("    top kernels " + ", ".join(
                f"{k['kernel'][:40]} {k['ms_per_step']:.2f} ms x{k['calls_per_step']:.0f}" for k in e["kernel_ops"][:5]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
