"""Time and peak GPU memory of LoRA recovery steps at 7B scale, on random bf16 weights (issue 12).

A Llama of a real shape is built on the GPU with random weights (the dense teacher), a copy is pruned to the
ratio by magnitude (``l1``, no reconstruction: only the shapes matter here), and ``hywia.recover`` runs a few
optimizer steps on random token rows with each objective; the step time excludes the first (warm-up) step.

    source bench/device_env.sh && python bench/recovery_step.py --shape llama-7b --ratio 0.2 --steps 4
    python bench/recovery_step.py --tiny        # a tiny shape on the CPU: checks the script
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from scale import SHAPES, TINY, placeholder_tokenizer

from hywia import PruneConfig, prune
from hywia.recover import RecoverConfig, RecoveryData, recover


def random_rows(count: int, length: int, vocab: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, vocab, (length,), generator=generator), torch.ones(length, dtype=torch.long))
            for _ in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-7b", choices=list(SHAPES))
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per objective (the first is warm-up)")
    parser.add_argument("--objectives", default="distill,lm")
    parser.add_argument("--recipe", default="passages", help="RecoverConfig values of this named recipe")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from hywia.recover.train import RECIPES

    shape, device, dtype = (TINY, "cpu", torch.float32) if args.tiny else (SHAPES[args.shape], "cuda", torch.bfloat16)
    if not args.tiny and not torch.cuda.is_available():
        print("bench/recovery_step.py needs a CUDA GPU (or --tiny)", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        dense = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=False), dtype=dtype).eval()
    tokenizer = placeholder_tokenizer(shape["vocab_size"])
    pruned = copy.deepcopy(dense)
    prune(pruned, None, PruneConfig(ratio=args.ratio, method="l1", reconstruct=False, progress=False))
    recipe = dict(RECIPES[args.recipe])
    batch = 4 if args.tiny else recipe.get("batch_size", 128)
    cutoff = 32 if args.tiny else 256
    data = RecoveryData(random_rows(batch * args.steps, cutoff, shape["vocab_size"], 0),
                        random_rows(1, cutoff, shape["vocab_size"], 1), {"source": "random token rows"})
    results = []
    for objective in args.objectives.split(","):
        student = copy.deepcopy(pruned)
        config = RecoverConfig(objective=objective, recipe=args.recipe, **{**recipe, "batch_size": batch},
                               cutoff=cutoff, max_steps=args.steps, warmup_steps=0, eval_every=10**9, progress=False)
        times: list[float] = []
        original = torch.optim.AdamW.step

        def timed_step(self, *a, **k):  # the time between optimizer steps = one full step
            out = original(self, *a, **k)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return out

        torch.optim.AdamW.step = timed_step
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            done = recover(student, tokenizer, config, dense if objective == "distill" else None, data=data)
        finally:
            torch.optim.AdamW.step = original
        step_s = (times[-1] - times[0]) / max(1, len(times) - 1)
        row = {"shape": "tiny" if args.tiny else args.shape, "ratio": args.ratio, "objective": objective,
               "recipe": args.recipe, "examples_per_step": batch, "cutoff": cutoff,
               "micro_batch": done.recovery["recipe"]["micro_batch_size_used"], "step_s": round(step_s, 3),
               "tokens_per_s": round(batch * cutoff / step_s), "training_dtype": done.recovery["recipe"]["training_dtype"],
               "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
               "weights_gb": round(sum(p.numel() * p.element_size() for p in dense.parameters()) / 2**30, 2)}
        results.append(row)
        print(json.dumps(row), flush=True)
        del student, done
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
