"""Quality table of issue 10: every method (with and without reconstruction) over calibration seeds.

    python bench/quality.py --variants-file bench/variants/final.json --ratios 0.2 0.5 --layers 4:28 \
        --seeds 0 1 2 --device cuda --out results.jsonl [--model gemma.gguf] [--mc val|paper] [--mc-limit N]

One JSON line per (ratio, seed, variant) is appended to --out as soon as it is measured, so a run cut
short keeps what it measured; ``bench/quality_table.py`` turns the lines into mean +- spread tables.
Columns: perplexity on the BoolQ passages (reported text) and on held-out LAMBADA (validation text,
never sampled for calibration), the validation-split accuracy of ARC-e / ARC-c / OBQA (``--mc val``, for
choosing settings) or the paper's 7-task average (``--mc paper``, reported), and the prune time.
A variant is a JSON object: {"method", "allocation", "options", "reconstruct", "damping", "min_width",
"calib", "calib_samples", "calib_len", "mc_full", "mc"}; missing keys take the run's defaults ("mc": the
multiple-choice columns of this variant, e.g. ["val", "paper"] where --mc gives only "paper").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from benchlib import machine

from hywia import PruneConfig, count_parameters, load_model, prune
from hywia.calibration.texts import (
    DEFAULT_EVALUATION,
    calibration_samples,
    held_out_ids,
    load_text,
    sequence_bos,
    tokenize,
)
from hywia.evaluate.perplexity import perplexity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--label", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    parser.add_argument("--ratio-base", default="all", choices=("all", "non-embedding"),
                        help="what --ratios are fractions of")
    parser.add_argument("--layers", default="4:28")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants-file", required=True, help="JSON {name: variant}")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    parser.add_argument("--calib", default="lambada")
    parser.add_argument("--calib-samples", type=int, default=10)
    parser.add_argument("--calib-len", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--mc", nargs="*", choices=("val", "paper"), default=["val"],
                        help="val: ARC-e/ARC-c/OBQA validation splits (selection); paper: the 7 tasks (reported)")
    parser.add_argument("--mc-limit", type=int, default=None, help="documents per paper task (None: full sets)")
    parser.add_argument("--val-limit", type=int, default=None, help="documents per validation task (smoke tests only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--round-to", default=None,
                        help="MLP width step of every variant without its own round_to (default: PruneConfig's auto)")
    parser.add_argument("--skip-dense", action="store_true", help="no dense row (measured by an earlier run)")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def mc_tasks(kind: str) -> list[str]:
    from hywia.evaluate.zeroshot import PAPER_TASKS, SELECTION_TASKS

    return list(SELECTION_TASKS) if kind == "val" else list(PAPER_TASKS)


def _round_to(value):
    return value if value == "auto" else int(value)


def mc_scores(model, tokenizer, kind: str, limit: int | None, batch_size: int, val_limit: int | None = None) -> dict:
    """``val``: keys val_mc*, the full validation splits unless ``val_limit``; ``paper``: keys mc_*, ``limit`` docs per task."""
    from hywia.evaluate.zeroshot import evaluate_zeroshot

    started = time.perf_counter()
    limit = val_limit if kind == "val" else limit
    result = evaluate_zeroshot(model, tokenizer, mc_tasks(kind), limit=limit, batch_size=batch_size,
                               mode="offline", log=lambda *_: None)
    per_task = {name: round(100 * score.paper_score, 2) for name, score in result.scores.items()
                if score.paper_score is not None}
    prefix = "val_mc" if kind == "val" else "mc"
    return {f"{prefix}_avg": round(sum(per_task.values()) / len(per_task), 2), f"{prefix}_tasks": per_task,
            f"{prefix}_limit": limit, f"{prefix}_seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = json.loads(Path(args.variants_file).read_text())
    names = args.only or list(variants)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    dense_model, tokenizer = loaded.model, loaded.tokenizer
    bos_id = sequence_bos(dense_model, tokenizer)
    texts = {}

    def text(name):
        if name not in texts:
            texts[name] = load_text(name, name)
        return texts[name]

    val_ids = held_out_ids(tokenizer, text("lambada"), args.eval_tokens)
    eval_ids = tokenize(tokenizer, load_text(None, DEFAULT_EVALUATION), args.eval_tokens)
    out = Path(args.out)
    common = {"model": args.label, "layers": args.layers, "machine": machine()}

    def measure(model) -> dict:
        return {
            "ppl": round(perplexity(model, eval_ids, window=args.window, progress=False, bos_id=bos_id).perplexity, 3),
            "val_ppl": round(perplexity(model, val_ids, window=args.window, progress=False, bos_id=bos_id).perplexity, 3),
        }

    def write(row):
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        mc = "".join(f"{key} {row[key + '_avg']:6.2f} ({row[key + '_seconds']:.0f} s)  " for key in ("val_mc", "mc")
                     if key + "_avg" in row)
        print(f"{row.get('ratio', 0):.0%} s{row.get('seed', '-')} {row['variant']:28s} val {row['val_ppl']:9.2f}  "
              f"ppl {row['ppl']:9.2f}  {mc}  {row.get('seconds', 0):.1f} s", flush=True)

    if not args.skip_dense:
        dense_row = {**common, "variant": "dense", "params": count_parameters(dense_model), **measure(dense_model)}
        for kind in args.mc:
            dense_row.update(mc_scores(dense_model, tokenizer, kind, args.mc_limit, args.batch_size, args.val_limit))
        write(dense_row)
    samples: dict = {}
    for name in names:  # variant by variant: a run cut short loses whole variants, not some of their seeds
        for ratio in args.ratios:
            for seed in args.seeds:
                spec = variants[name]
                calib_key = (spec.get("calib", args.calib), spec.get("calib_samples", args.calib_samples),
                             spec.get("calib_len", args.calib_len), seed)
                if calib_key not in samples:
                    samples[calib_key] = calibration_samples(tokenizer, text(calib_key[0]), *calib_key[1:],
                                                             bos_id=bos_id)
                config = PruneConfig(
                    ratio=ratio, ratio_base=args.ratio_base, method=spec["method"],
                    allocation=spec.get("allocation"), layers=args.layers, seed=seed, progress=False,
                    min_width=spec.get("min_width", 0.0), method_options=dict(spec.get("options", {})),
                    reconstruct=bool(spec.get("reconstruct", False)),
                    **({"reconstruct_damping": spec["damping"]} if "damping" in spec else {}),
                    **({"round_to": _round_to(spec.get("round_to", args.round_to))}
                       if spec.get("round_to", args.round_to) is not None else {}),
                )
                model = copy.deepcopy(dense_model)
                started = time.perf_counter()
                result = prune(model, tokenizer, config, calibration_ids=samples[calib_key],
                               reconstruction_ids=samples[calib_key])
                seconds = time.perf_counter() - started
                row = {**common, "variant": name, "spec": spec, "ratio": ratio, "ratio_base": args.ratio_base,
                       "seed": seed, "achieved": result.report["parameters"]["achieved_ratio"],
                       "achieved_non_embedding": result.report["parameters"]["achieved_ratio_non_embedding"],
                       "params": result.report["parameters"]["after"], "seconds": round(seconds, 2),
                       **measure(model)}
                for kind in spec.get("mc", args.mc):
                    limit = None if spec.get("mc_full") else args.mc_limit
                    row.update(mc_scores(model, tokenizer, kind, limit, args.batch_size, args.val_limit))
                details = result.report.get("method_details") or {}
                if details.get("alpha_fine"):
                    alphas = list(details["alpha_fine"].values())
                    row["alpha_fine_mean"] = round(sum(alphas) / len(alphas), 3)
                    row["alpha_fine_range"] = [round(min(alphas), 3), round(max(alphas), 3)]
                if details.get("seconds_per_stage"):
                    row["method_seconds"] = details["seconds_per_stage"]
                if result.report.get("reconstruction"):
                    row["reconstruction_seconds"] = result.report["reconstruction"].get("seconds")
                write(row)
                del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
