"""``DIR/eval/results.json`` and ``DIR/eval/results.md``: evaluation results stored next to a model folder.

Each run replaces the sections it computed (``perplexity`` per text, ``zeroshot`` as a whole) and keeps
the others, so ``hywia eval --tasks paper --no-ppl`` after a perplexity run leaves the perplexity in place.
Only the ``eval/`` sub-folder is written: the model files are never touched.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from ..errors import HywiaError
from ..models.io import read_json
from ..report import package_versions

EVAL_FOLDER = "eval"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def results_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / EVAL_FOLDER / RESULTS_JSON


def load_results(model_dir: str | Path) -> dict:
    """The stored results of a model folder, or ``{}`` if it has none."""
    return _load(results_path(model_dir))


def merge_results(old: dict, *, model: str, parameters: int, perplexities: list[dict],
                  zeroshot: dict | None, command: str) -> dict:
    merged = dict(old)
    merged.update(format="hywia-eval/1", model=model, parameters=parameters, command=command,
                  updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  versions=package_versions())
    if perplexities:
        merged["perplexity"] = dict(old.get("perplexity") or {})
        for entry in perplexities:
            merged["perplexity"][f"{entry['text']}@{entry['window']}"] = entry
    if zeroshot is not None:
        merged["zeroshot"] = zeroshot
    return merged


def render_markdown(results: dict) -> str:
    from .zeroshot import markdown_table

    lines = [f"# Evaluation of {results.get('model', '?')}", "",
             f"{results.get('parameters', 0):,} parameters; updated {results.get('updated', '?')}", "",
             f"Command: `{results.get('command', '')}`", ""]
    perplexities = results.get("perplexity") or {}
    if perplexities:
        lines += ["## Perplexity", "", "| text | window | windows | tokens scored | perplexity |", "|---|---|---|---|---|"]
        for entry in perplexities.values():
            lines.append(f"| {entry['text']} | {entry['window']} | {entry['windows']} | {entry['tokens_scored']} "
                         f"| {entry['perplexity']:.3f} |")
        lines.append("")
    zeroshot = results.get("zeroshot")
    if zeroshot:
        lines += ["## Zero-shot (lm-evaluation-harness " + str(zeroshot.get("lm_eval_version")) + ", 0-shot, %)", "",
                  markdown_table(zeroshot), ""]
        lines += [f"- {note}" for note in zeroshot.get("notes", [])] + [""]
    return "\n".join(lines)


def save_results(model_dir: str | Path, results: dict) -> Path:
    """Write ``eval/results.json`` and ``eval/results.md`` inside the model folder; return the folder."""
    return save_results_in(Path(model_dir) / EVAL_FOLDER, results)


def load_results_in(folder: str | Path) -> dict:
    """The results stored directly in ``folder`` (``hywia eval --results DIR``), or ``{}``."""
    return _load(Path(folder) / RESULTS_JSON)


def _load(path: Path) -> dict:
    return read_json(path, "; delete it and evaluate again")


def save_results_in(folder: str | Path, results: dict) -> Path:
    """Write ``results.json`` and ``results.md`` into ``folder`` (created); return it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HywiaError(f"--results {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ((RESULTS_JSON, json.dumps(results, indent=1)), (RESULTS_MD, render_markdown(results))):
        partial = folder / f".{name}.partial"
        partial.write_text(text)
        partial.replace(folder / name)
    return folder
