"""Ablation: every importance method on the same model, calibration and evaluation text.

    python bench/ablation.py --ratios 0.2 0.5 --layers 4:28 [--device cuda] [--write BENCHMARKS.md]

Calibration: LAMBADA passages (10 x 128 tokens, seed 42 unless changed); evaluation: perplexity on the
BoolQ Wikipedia passages (first --eval-tokens tokens, 128-token windows). The two texts are disjoint.
Every row prunes a fresh copy of the model to the same parameter count.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


from benchlib import command_line, machine

from hywia import PruneConfig, count_parameters, load_model, prune
from hywia.calibration.texts import (
    DEFAULT_CALIBRATION,
    DEFAULT_EVALUATION,
    calibration_samples,
    held_out_ids,
    load_text,
    sequence_bos,
    tokenize,
)
from hywia.importance import METHODS
from hywia.evaluate.perplexity import perplexity

# name: (method, allocation, method options)
VARIANTS = {
    "random": ("random", "uniform", {}),
    "l2": ("l2", "uniform", {}),
    "element1": ("element1", "uniform", {}),
    "element2": ("element2", "uniform", {}),
    "vector": ("vector", "uniform", {}),
    "fixed 0.5/0.5": ("hywia", "uniform", {"fixed_alpha": 0.5}),
    "hywia (per layer)": ("hywia", "uniform", {}),
    "hywia (per group)": ("hywia", "uniform", {"blend": "group"}),
    "hywia + global": ("hywia", "global", {}),
    "element1 + global": ("element1", "global", {}),
    "wanda-sp": ("wanda-sp", "uniform", {}),
    "flap": ("flap", "global-score", {}),  # FLAP's own rule, the CLI default
    "flap + global": ("flap", "global", {}),  # FLAP scores, widths by score per parameter
    "flap (uniform)": ("flap", "uniform", {}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--layers", default="4:28")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--options", default="{}", help="JSON dict of extra HyWIA options for hywia rows")
    parser.add_argument("--extra-variants", default="{}",
                        help='JSON {"name": [method, allocation, {options}]} added to the run')
    parser.add_argument("--calib-samples", type=int, default=10)
    parser.add_argument("--calib-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--zeroshot-limit", type=int, default=None,
                        help="also report the 7-task average (lm-eval, first N documents per task)")
    parser.add_argument("--zeroshot-variants", nargs="*", default=None,
                        help="rows that get the 7-task average (default: all, when --zeroshot-limit is set)")
    parser.add_argument("--title", default="HyWIA ablation")
    parser.add_argument("--write", default=None, help="append the table to this markdown file")
    parser.add_argument("--json", default=None, help="write the raw rows to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    extra = json.loads(args.options)
    VARIANTS.update({name: tuple(spec) for name, spec in json.loads(args.extra_variants).items()})
    names = args.variants or [n for n, (m, _, _) in VARIANTS.items() if m in METHODS]
    names += [n for n in json.loads(args.extra_variants) if n not in names]
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    dense_model, tokenizer = loaded.model, loaded.tokenizer
    calib_text = load_text(None, DEFAULT_CALIBRATION)
    bos_id = sequence_bos(dense_model, tokenizer)
    calib = calibration_samples(tokenizer, calib_text, args.calib_samples, args.calib_len, args.seed, bos_id=bos_id)
    # Validation (for choosing settings): held-out LAMBADA, never sampled for calibration, never evaluation.
    val_ids = held_out_ids(tokenizer, calib_text, args.eval_tokens)
    eval_ids = tokenize(tokenizer, load_text(None, DEFAULT_EVALUATION), args.eval_tokens)
    dense = perplexity(dense_model, eval_ids, window=args.window, progress=False, bos_id=bos_id)
    dense_val = perplexity(dense_model, val_ids, window=args.window, progress=False, bos_id=bos_id)
    dense_avg7 = zeroshot_average(args, dense_model, tokenizer) if args.zeroshot_limit else None
    print(f"dense: {count_parameters(dense_model):,} parameters, val PPL {dense_val.perplexity:.2f}, "
          f"PPL {dense.perplexity:.2f}, 7-task average {dense_avg7}", flush=True)
    rows = []
    for ratio in args.ratios:
        for name in names:
            method, allocation, options = VARIANTS[name]
            if method == "hywia":
                options = {**options, **extra}
            model = copy.deepcopy(dense_model)
            started = time.perf_counter()
            result = prune(model, tokenizer, PruneConfig(ratio=ratio, method=method, allocation=allocation,
                                                         layers=args.layers, seed=args.seed, progress=False,
                                                         method_options=options), calibration_ids=calib)
            seconds = time.perf_counter() - started
            ppl = perplexity(model, eval_ids, window=args.window, progress=False, bos_id=bos_id).perplexity
            val = perplexity(model, val_ids, window=args.window, progress=False, bos_id=bos_id).perplexity
            row = {"ratio": ratio, "variant": name, "achieved": result.report["parameters"]["achieved_ratio"],
                   "params": result.report["parameters"]["after"], "ppl": ppl, "val_ppl": val, "seconds": seconds}
            if args.zeroshot_limit and (args.zeroshot_variants is None or name in args.zeroshot_variants):
                row["avg7"] = zeroshot_average(args, model, tokenizer)
            details = result.report.get("method_details") or {}
            if "loss_curve" in details and details["loss_curve"]:
                row["fusion_loss"] = [details["loss_curve"][0], details["loss_curve"][-1]]
            rows.append(row)
            if args.json:  # after every row: a run cut short still leaves what it measured
                Path(args.json).write_text(json.dumps({"dense_ppl": dense.perplexity, "rows": rows}, indent=1))
            print(f"{ratio:.0%} {name:22s} removed {row['achieved']:.2%}  val PPL {val:10.2f}  PPL {ppl:10.2f}  "
                  f"({seconds:.0f} s)", flush=True)
            del model
    dense.avg7 = dense_avg7
    table = render(args, dense, dense_val, rows)
    print(table)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"dense_ppl": dense.perplexity, "rows": rows}, indent=1))
    return 0


def zeroshot_average(args, model, tokenizer) -> float | None:
    """The paper's 7-task average (acc for BoolQ/PIQA/WinoGrande, acc_norm for the others), in %."""
    from hywia.evaluate.zeroshot import PAPER_TASKS, evaluate_zeroshot

    result = evaluate_zeroshot(model, tokenizer, list(PAPER_TASKS), limit=args.zeroshot_limit, batch_size=32,
                               mode="offline", log=lambda *_: None)
    return None if result.average is None else round(100 * result.average, 2)


def render(args, dense, dense_val, rows) -> str:
    lines = [
        f"### {args.title}", "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}; model {args.model or 'SmolLM2-135M-Instruct (embedded GGUF)'}, {args.dtype}.  ",
        f"Calibration: LAMBADA, {args.calib_samples} x {args.calib_len} tokens, seed {args.seed}. Evaluation: "
        f"BoolQ passages, first {args.eval_tokens} tokens, {args.window}-token windows. Layers pruned: {args.layers}. "
        f"Dense PPL {dense.perplexity:.2f} (validation {dense_val.perplexity:.2f})"
        + (f", 7-task average {dense.avg7} (lm-eval 0-shot, first {args.zeroshot_limit} documents per task)"
           if args.zeroshot_limit else "") + ". Settings are chosen on the validation column only.", "",
        "| target | method | removed | params | val PPL (LAMBADA held-out) | PPL (BoolQ passages) | 7-task avg | time (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['ratio']:.0%} | {row['variant']} | {row['achieved']:.2%} | {row['params']:,} | "
                     f"{row['val_ppl']:.2f} | {row['ppl']:.2f} | {row.get('avg7', '')} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
