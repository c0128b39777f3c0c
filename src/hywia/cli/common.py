"""Options and steps shared by the subcommands: the model to load, perplexity texts and their scoring."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL_HELP = "hub id, model folder or .gguf file (default: embedded SmolLM2-135M-Instruct)"


def add_model_args(parser: argparse.ArgumentParser, help_text: str = DEFAULT_MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, help=help_text)
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (spread over all GPUs)")


def add_remote_code_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model folder's own Python code (needed for Baichuan; off by default, only "
                             "for models you trust)")


def check_source(spec: str | None, trust_remote_code: bool = False):
    """Check the model source before any weight is loaded; returns ``(SourceInfo or None, offline reason)``.

    A folder or ``.gguf`` file is inspected (config, architecture, weight headers); a hub id gets one
    quick probe of the hub (or HF_HUB_OFFLINE), so that an unreachable hub fails at once, not after retries.
    """
    from pathlib import Path

    from ..calibration import hub
    from ..errors import HywiaError
    from ..models.checks import inspect_source
    from ..models.io import _looks_local, default_model_path, hub_offline_by_environment

    path = default_model_path() if spec is None else Path(spec).expanduser()
    if path.exists():
        return inspect_source(path, trust_remote_code), None
    if _looks_local(spec):
        raise HywiaError(f"model not found: {spec}")
    return None, hub_offline_by_environment() or (None if hub.hub_reachable() else "hub not reachable")


def quiet_libraries() -> None:
    """--quiet: no progress bars from transformers / huggingface_hub either (loading and writing weights)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def add_eval_args(parser: argparse.ArgumentParser, text_flag: str, default_text: str) -> None:
    parser.add_argument(text_flag, default=None, dest="eval_text",
                        help="perplexity texts, comma separated: files, boolq-passages (local), wikitext2 (test) "
                             "and ptb (validation) from the hub, or 'paper' = boolq-passages plus wikitext2 and "
                             f"ptb when the hub is usable (default: {default_text})")
    parser.add_argument("--window", type=int, default=128, help="perplexity window in tokens (default 128)")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="score the first N tokens of each text (default: 16384 of boolq-passages, "
                             "all of any other text; 0 = all)")
    parser.add_argument("--eval-batch-size", type=int, default=8)


def describe_model(loaded) -> str:
    from ..models import count_parameters
    from ..models.placement import describe_placement

    return (f"model: {loaded.source} ({count_parameters(loaded.model):,} parameters, "
            f"{describe_placement(loaded.model)})")


def eval_texts(args, default: str) -> list[str]:
    """The perplexity texts asked for; ``paper`` asks whether the hub is usable (``--offline``/``--online``)."""
    from ..calibration.texts import resolve_eval_texts
    from ..calibration.hub import decide_offline

    spec = args.eval_text or default
    asks_hub = "paper" in (part.strip() for part in spec.split(","))
    offline, why = decide_offline(getattr(args, "data_mode", "auto")) if asks_hub else (True, "")
    names, note = resolve_eval_texts(spec, offline, why)
    if note:
        print(f"hywia: note: {note}", file=sys.stderr)
    return names


def perplexities(model, tokenizer, args, names: list[str]) -> list[dict]:
    from ..calibration.texts import default_eval_tokens, load_text, sequence_bos, tokenize
    from ..evaluate.perplexity import perplexity

    bos_id = sequence_bos(model, tokenizer) if names else None
    results = []
    for name in names:
        max_tokens = default_eval_tokens(name) if args.eval_tokens is None else args.eval_tokens or None
        ids = tokenize(tokenizer, load_text(name, name), max_tokens)
        results.append(perplexity(model, ids, window=args.window, batch_size=args.eval_batch_size,
                                  text_name=name, progress=not args.quiet, bos_id=bos_id).to_dict())
    return results


def describe_ppl(label: str, result: dict) -> str:
    bos = ", each BOS + text" if result.get("bos_per_window") else ""
    return (f"{label} perplexity: {result['perplexity']:.3f} ({result['text']}, {result['windows']} windows of "
            f"{result['window']} tokens{bos}, {result['tokens_scored']} tokens scored)")
