"""Before / after recovery table of issue 12: dense, pruned, and pruned + LoRA recovery (LM loss and
distillation from the dense model), on BoolQ-passages perplexity and the paper's 7-task zero-shot average.

    source bench/device_env.sh && python bench/recovery.py --device cuda            # the issue's table
    source bench/device_env.sh && python bench/recovery.py --device cuda --ratios 0.2 --methods hywia \
        --objectives distill --max-steps 50 --limit 200 --out-jsonl /tmp/quick.jsonl
    source bench/device_env.sh && python bench/recovery.py --device cuda --ratios 0.2 --methods hywia --objectives distill \
        --mc val --sweep "lr=1e-4" "lr=5e-4 batch_size=32" "lr=5e-4 batch_size=32 epochs=4"   # choose a recipe
    python bench/recovery.py --tiny                    # tiny random Llama on the CPU: checks this script (~1 min)
    python bench/recovery.py --ratios 0.2 --methods flap --objectives distill --max-steps 2 --limit 5 \
        --recipe batch_size=8 --out-jsonl /tmp/check.jsonl          # SmolLM2 on the CPU: stage timings
    python bench/recovery.py --seeds-table a.jsonl b.jsonl          # mean +- spread over calibration seeds

One process: the dense model is loaded and evaluated once; for each ratio and method a copy is pruned
with the CLI's defaults (``PruneConfig``: mixed calibration text, 128 x 128 tokens, reconstruction on),
evaluated, and for each objective a copy of the pruned model is recovered with ``hywia.recover``'s
default recipe (``RecoverConfig``; ``--max-steps`` and ``--recipe KEY=VALUE`` change it), merged and
evaluated again. The teacher of ``distill`` is a copy of the dense model (``recover`` casts its teacher
to the training dtype). Data: the objective's default source, as ``hywia recover`` (``lm``: alpaca-cleaned
when the hub is usable, else the offline reading passages; ``distill``: the reading passages); each row
records the source and its token counts. Recovered models are evaluated in ``--dtype`` like the others
(training may run in bf16 on GPUs, which rounds the merged weights; ``training_dtype`` is recorded).

One JSON line per (ratio, method, stage) is appended to ``--out-jsonl`` as soon as it is measured, with
wall seconds, tokens seen and the peak CUDA memory of the stage (reset per stage; None on the CPU); a
markdown table (method x stage; gap closed = (pruned - recovered) / (pruned - dense) perplexity) ends the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch
from benchlib import REPO, machine
from quality import mc_scores

from hywia import PruneConfig, count_parameters, load_model, prune
from hywia.calibration.texts import DEFAULT_EVALUATION, held_out_ids, load_text, sequence_bos, tokenize
from hywia.evaluate.perplexity import perplexity
from hywia.recover import RecoverConfig, recover

TINY_RECIPE = dict(batch_size=4, micro_batch_size=2, cutoff=64, max_examples=40, max_val=4, eval_every=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="folder, .gguf, hub id (default: embedded SmolLM2-135M)")
    parser.add_argument("--label", default=None, help="model name in the rows (default: smollm2-135m / tiny-llama)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="load and evaluation dtype")
    parser.add_argument("--ratios", default="0.2,0.5")
    parser.add_argument("--methods", default="hywia,element1,flap")
    parser.add_argument("--objectives", default="lm,distill")
    parser.add_argument("--layers", default=None, help="default 4:28 (--tiny: all layers)")
    parser.add_argument("--seed", type=int, default=0, help="calibration seed of the pruning")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the recipe's epochs)")
    parser.add_argument("--recipe", nargs="*", default=[], metavar="KEY=VALUE",
                        help="other RecoverConfig fields, e.g. batch_size=8 data=reading-passages")
    parser.add_argument("--sweep", nargs="*", default=None, metavar="'KEY=VALUE ...'",
                        help="recipes to compare, each a quoted set of KEY=VALUE on top of --recipe (one row each)")
    parser.add_argument("--recipe-from", default=None, metavar="JSONL",
                        help="the rows of an earlier --sweep: add the recipe whose recovered model has the lowest "
                             "held-out LAMBADA PPL (validation text only; ties: higher validation MC) to --recipe")
    parser.add_argument("--mc", nargs="*", choices=("val", "paper"), default=["paper"],
                        help="val: ARC-e/ARC-c/OBQA validation splits (to choose a recipe); paper: the 7 tasks")
    parser.add_argument("--limit", type=int, default=None, help="documents per zero-shot task (default: full sets)")
    parser.add_argument("--eval-tokens", type=int, default=16384, help="BoolQ-passages tokens scored")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="zero-shot batch size")
    parser.add_argument("--out-jsonl", default=None,
                        help="default bench/results/issue12_recovery.jsonl (--tiny: a temporary file)")
    parser.add_argument("--seeds-table", nargs="+", default=None, metavar="JSONL",
                        help="only print the mean +- spread over calibration seeds of these rows, then exit")
    parser.add_argument("--skip-dense", action="store_true",
                        help="do not evaluate the dense model (its row exists from an earlier run; no gap column)")
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama on the CPU, 2 steps, --limit 4")
    args = parser.parse_args(argv)
    if args.tiny:
        args.device, args.limit = "cpu", args.limit or 4
        args.max_steps, args.eval_tokens = args.max_steps or 2, min(args.eval_tokens, 2048)
    args.layers = args.layers or (None if args.tiny else "4:28")
    args.label = args.label or ("tiny-llama (random)" if args.tiny else "smollm2-135m")
    if args.recipe_from:
        label = chosen_recipe(Path(args.recipe_from), args.label)
        print(f"recipe chosen from {args.recipe_from} on held-out LAMBADA PPL: {label or '(the default)'}", flush=True)
        args.recipe = list(args.recipe) + label.split()
    if args.out_jsonl is None:
        args.out_jsonl = (str(Path(tempfile.mkdtemp()) / "recovery_tiny.jsonl") if args.tiny
                          else str(REPO / "bench/results/issue12_recovery.jsonl"))
    return args


def chosen_recipe(path: Path, model: str) -> str:
    """The ``recipe_label`` of the recovered row of ``model`` with the lowest held-out LAMBADA perplexity
    (then the highest validation MC average) in a --sweep's jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("model") == model and r.get("stage") not in ("dense", "pruned")]
    if not rows:
        raise SystemExit(f"--recipe-from: {path} has no recovered rows of {model}")
    best = min(rows, key=lambda r: (r["val_ppl"], -r.get("val_mc_avg", 0.0)))
    return best.get("recipe_label") or ""


def recipe(args, objective: str, extra: str = "") -> RecoverConfig:
    hints = typing.get_type_hints(RecoverConfig)
    overrides = {**(TINY_RECIPE if args.tiny else {}), "max_steps": args.max_steps, "progress": False}
    for item in list(args.recipe) + extra.split():
        key, _, text = item.partition("=")
        if key not in hints:
            raise SystemExit(f"--recipe: RecoverConfig has no field {key!r}")
        kinds = typing.get_args(hints[key]) or (hints[key],)  # int | None -> (int, NoneType)
        overrides[key] = int(text) if int in kinds else float(text) if float in kinds else \
            text.lower() in ("1", "true", "yes") if bool in kinds else text
    return RecoverConfig(objective=objective, **overrides)


def load(args):
    if not args.tiny:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        return loaded.model, loaded.tokenizer
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import byte_tokenizer, tiny_llama

    return tiny_llama(num_hidden_layers=4).to(getattr(torch, args.dtype)), byte_tokenizer()


class Peak:
    """Wall seconds and peak CUDA memory (MB) of a block; the peak is None on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = round(time.perf_counter() - self.started, 2)
        self.peak_mb = round(torch.cuda.max_memory_allocated() / 2**20) if self.cuda else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds_table:
        rows = [json.loads(line) for path in args.seeds_table for line in Path(path).read_text().splitlines() if line.strip()]
        print(seeds_table(rows))
        return 0
    ratios = [float(r) for r in args.ratios.split(",")]
    methods, objectives = args.methods.split(","), args.objectives.split(",")
    started = time.perf_counter()
    dense, tokenizer = load(args)
    print(f"TIME load: {time.perf_counter() - started:.1f} s", flush=True)
    bos_id = sequence_bos(dense, tokenizer)
    eval_ids = tokenize(tokenizer, load_text(None, DEFAULT_EVALUATION), args.eval_tokens)
    val_ids = held_out_ids(tokenizer, load_text("lambada", "lambada"), args.eval_tokens)  # never calibration text
    out = Path(args.out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {"model": args.label, "layers": args.layers, "seed": args.seed, "machine": machine()}
    rows: list[dict] = []
    teacher = None  # a copy of the dense model: recover() casts its teacher and freezes it

    def measure(model, stage: str, **extra) -> dict:
        model.eval()
        with Peak(args.device) as clock:
            ppl = perplexity(model, eval_ids, window=args.window, progress=False, bos_id=bos_id).perplexity
            val_ppl = perplexity(model, val_ids, window=args.window, progress=False, bos_id=bos_id).perplexity
            mc = {}
            for kind in args.mc:
                mc.update(mc_scores(model, tokenizer, kind, args.limit, args.batch_size))
        row = {**common, "stage": stage, "params": count_parameters(model), "boolq_ppl": round(ppl, 3),
               "val_ppl": round(val_ppl, 3), "docs_limit": args.limit, "eval_seconds": clock.seconds,
               "eval_peak_mb": clock.peak_mb, **mc, **extra}
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
        rows.append(row)
        accuracy = "  ".join(f"{key} {row[key + '_avg']:6.2f}" for key in ("val_mc", "mc") if key + "_avg" in row)
        print(f"{row.get('ratio') or 0:.0%} {row.get('method') or '-':9s} {stage:8s} {row.get('recipe_label', '')} "
              f"ppl {row['boolq_ppl']:9.2f}  val ppl {row['val_ppl']:9.2f}  {accuracy}  stage {row.get('seconds', 0):.1f} s  "
              f"eval {clock.seconds:.1f} s", flush=True)
        return row

    if not args.skip_dense:
        measure(dense, "dense", ratio=None, method=None)
    for ratio in ratios:
        for method in methods:
            config = PruneConfig(ratio=ratio, method=method, layers=args.layers, seed=args.seed, progress=False,
                                 **(dict(num_samples=4, seq_len=16) if args.tiny else {}))
            pruned = copy.deepcopy(dense)
            with Peak(args.device) as clock:
                result = prune(pruned, tokenizer, config)
            params = result.report["parameters"]
            key = {"ratio": ratio, "method": method}
            measure(pruned, "pruned", **key, achieved=params["achieved_ratio"], seconds=clock.seconds,
                    peak_mb=clock.peak_mb, prune_recipe=result.report.get("recipe"))
            for objective, label in [(o, label) for o in objectives for label in (args.sweep or [""])]:
                rec_config = recipe(args, objective, label)
                key = {"ratio": ratio, "method": method, "recipe_label": label}
                if objective == "distill" and teacher is None:
                    teacher = copy.deepcopy(dense)
                student = copy.deepcopy(pruned)
                with Peak(args.device) as clock:
                    done = recover(student, tokenizer, rec_config, teacher if objective == "distill" else None)
                rec = done.recovery
                model = done.model.to(dtype=next(dense.parameters()).dtype)
                data = {k: rec["data"].get(k) for k in ("source", "format", "train_examples", "train_tokens",
                                                        "validation_examples", "validation_tokens")}
                measure(model, objective, **key, seconds=clock.seconds, peak_mb=clock.peak_mb,
                        train_seconds=rec["seconds_this_run"], steps=rec["steps_done"],
                        tokens_seen=rec["tokens_trained_this_run"], data=data, recipe=rec["recipe"],
                        kept_adapters=rec["kept_adapters"], validation_loss=[rec["validation_loss_before"],
                                                                             rec["best_validation_loss"]])
                del student, model, done
            del pruned
    print(f"\nrows appended to {out}; total {time.perf_counter() - started:.0f} s\n")
    print(table(rows, args.limit))
    return 0


SEED_COLUMNS = (("boolq_ppl", "BoolQ PPL"), ("val_ppl", "held-out LAMBADA PPL"), ("val_mc_avg", "val MC avg"),
                ("mc_avg", "7-task avg"))


def seeds_table(rows: list[dict]) -> str:
    """Markdown: mean +- sample std over calibration seeds per (ratio, method, stage), with the seeds counted
    per column (a stage that timed out for one seed averages the others, and says so)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["stage"] != "dense":
            groups.setdefault((r["ratio"], r["method"], r["stage"]), []).append(r)
    lines = ["| ratio | method | stage | " + " | ".join(name for _, name in SEED_COLUMNS) + " |",
             "|---|---|---|" + "---:|" * len(SEED_COLUMNS)]
    order = {"pruned": 0, "distill": 1, "lm": 2}
    for (ratio, method, stage), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], order.get(g[0][2], 9))):
        cells = []
        for key, _ in SEED_COLUMNS:
            values = [r[key] for r in group if r.get(key) is not None]
            if not values:
                cells.append("")
                continue
            mean = statistics.fmean(values)
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{mean:.2f}{spread} (n={len(values)})")
        lines.append(f"| {ratio:.0%} | {method} | {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict], limit: int | None) -> str:
    """Markdown: one line per (ratio, method, stage, recipe); gap closed against the dense and pruned BoolQ PPL
    (blank without a dense row)."""
    dense = next((r for r in rows if r["stage"] == "dense"), None)
    pruned = {(r["ratio"], r["method"]): r for r in rows if r["stage"] == "pruned"}

    def cell(row, key):
        return f"{row[key]:.2f}" if key in row else ""

    lines = ["| ratio | method | stage | recipe | BoolQ PPL | held-out LAMBADA PPL | val MC avg | 7-task avg | gap closed "
             "| stage s | tokens | peak MB |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gap = ""
        if r["stage"] not in ("dense", "pruned"):
            base = pruned[(r["ratio"], r["method"])]["boolq_ppl"]
            if dense is not None and base != dense["boolq_ppl"]:
                gap = f"{100 * (base - r['boolq_ppl']) / (base - dense['boolq_ppl']):.0f}%"
        ratio = f"{r['ratio']:.0%}" if r["ratio"] is not None else "-"
        lines.append(f"| {ratio} | {r['method'] or '-'} | {r['stage']} | {r.get('recipe_label') or ''} | "
                     f"{r['boolq_ppl']:.2f} | {r['val_ppl']:.2f} | {cell(r, 'val_mc_avg')} | {cell(r, 'mc_avg')} | "
                     f"{gap} | {r.get('seconds', '')} | {r.get('tokens_seen', '') or ''} | {r.get('peak_mb') or ''} |")
    return "\n".join(lines) + (f"\n\nstage s / peak MB: the prune (pruned rows) or the recovery (lm, distill rows); "
                               f"7-task: {'first ' + str(limit) + ' documents per task' if limit else 'full sets'}; "
                               "val MC: ARC-e/ARC-c/OBQA validation splits (choose recipes on it and on LAMBADA).")


if __name__ == "__main__":
    raise SystemExit(main())
