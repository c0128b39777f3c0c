"""Several evaluated models side by side: a markdown table and a bar chart (zero-shot scores, perplexity).

Reads ``DIR/eval/results.json`` (written by ``hywia eval``) and, when present, ``DIR/hywia_report.json``
(written by ``hywia prune``: method, ratio). Scores are the paper metric of each task (acc for BoolQ,
PIQA, WinoGrande; acc_norm for the others) in %, plus the 7-task average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HywiaError
from ..models.io import REPORT_NAME, read_report
from .results import load_results
from .zeroshot import PAPER_METRIC, PAPER_TASKS, SHORT_NAMES


@dataclass
class ModelRow:
    name: str
    parameters: int | None
    method: str  # "dense" when no pruning report is present
    ratio: float | None  # achieved fraction of parameters removed
    perplexity: dict[str, float] = field(default_factory=dict)  # "text@window" -> ppl
    scores: dict[str, float] = field(default_factory=dict)  # task -> paper metric (0..1)
    average: float | None = None
    limit: int | None = None


def collect(folders: list[str]) -> list[ModelRow]:
    rows = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise HywiaError(f"not a model folder: {folder}")
        results = load_results(path)
        report = read_report(path)
        if not results and not report:
            raise HywiaError(f"{folder} has neither eval/results.json nor {REPORT_NAME}; run hywia eval on it first")
        zeroshot = results.get("zeroshot") or {}
        tasks = zeroshot.get("tasks", {})
        parameters = results.get("parameters") or report.get("parameters", {}).get("after")
        rows.append(ModelRow(
            name=path.name,
            parameters=parameters,
            method=report.get("recipe", {}).get("method", "dense") if report else "dense",
            ratio=report.get("parameters", {}).get("achieved_ratio") if report else None,
            perplexity={key: entry["perplexity"] for key, entry in (results.get("perplexity") or {}).items()},
            scores={task: score[PAPER_METRIC.get(task, "acc")] for task, score in tasks.items()
                    if score.get(PAPER_METRIC.get(task, "acc")) is not None},
            average=zeroshot.get("average"),
            limit=zeroshot.get("limit"),
        ))
    return rows


def _task_order(rows: list[ModelRow]) -> list[str]:
    seen = [t for t in PAPER_TASKS if any(t in r.scores for r in rows)]
    return seen + sorted({t for r in rows for t in r.scores} - set(seen))


def _cell(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def markdown_comparison(rows: list[ModelRow]) -> str:
    tasks = _task_order(rows)
    texts = sorted({key for r in rows for key in r.perplexity})
    header = (["model", "method", "removed", "params"] + [f"PPL {t}" for t in texts]
              + [SHORT_NAMES.get(t, t) for t in tasks] + ["Avg (7)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.name, r.method, _cell(r.ratio, 100, 1) + ("%" if r.ratio is not None else ""),
                 f"{r.parameters:,}" if r.parameters else "-"]
        cells += [_cell(r.perplexity.get(t), 1.0, 2) for t in texts]
        cells += [_cell(r.scores.get(t)) for t in tasks] + [_cell(r.average)]
        lines.append("| " + " | ".join(cells) + " |")
    limits = {r.limit for r in rows if r.scores}
    notes = ["", "Zero-shot scores in %: acc for BoolQ, PIQA, WinoGrande; acc_norm for HellaSwag, ARC-e, ARC-c, OBQA."]
    if limits - {None}:
        notes.append(f"Scored on the first {', '.join(str(x) for x in sorted(limits, key=str))} documents per task (--limit).")
    return "\n".join(lines + notes)


def plot_comparison(rows: list[ModelRow], path: str | Path) -> Path:
    """Grouped bars, one bar per model: zero-shot scores per task (and the average) and/or perplexity
    per text (log scale), whichever the models have been evaluated on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _task_order(rows)
    texts = sorted({key for r in rows for key in r.perplexity})
    panels = ([("zeroshot", [SHORT_NAMES.get(t, t) for t in tasks] + ["Avg (7)"])] if tasks else []) + (
        [("perplexity", texts)] if texts else [])
    if not panels:
        raise HywiaError("nothing to plot: run hywia eval (perplexity and/or --tasks paper) on the models first")
    widths = [max(3.0, 1.1 * len(labels) * max(1, len(rows)) ** 0.5) for _, labels in panels]
    figure, axes_list = plt.subplots(1, len(panels), figsize=(max(6.0, sum(widths)), 4.0),
                                     gridspec_kw={"width_ratios": widths}, squeeze=False)
    bar = 0.8 / len(rows)
    for axes, (kind, labels) in zip(axes_list[0], panels):
        for i, row in enumerate(rows):
            if kind == "zeroshot":
                values = [100 * row.scores.get(t, float("nan")) for t in tasks]
                values.append(100 * row.average if row.average is not None else float("nan"))
            else:
                values = [row.perplexity.get(t, float("nan")) for t in texts]
            positions = [x + (i - (len(rows) - 1) / 2) * bar for x in range(len(labels))]
            axes.bar(positions, values, bar, label=row.name)
        axes.set_xticks(range(len(labels)), labels)
        if kind == "zeroshot":
            axes.set_ylabel("zero-shot score (%)")
            axes.set_ylim(0, 100)
        else:
            axes.set_ylabel("perplexity (log scale, lower is better)")
            axes.set_yscale("log")
            axes.tick_params(axis="x", labelrotation=15)
        axes.grid(axis="y", alpha=0.3)
    axes_list[0][0].legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
