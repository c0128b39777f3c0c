"""Zero-shot accuracy with lm-evaluation-harness used as a library, and the paper-average convention.

The loaded model and tokenizer are wrapped in ``lm_eval.models.huggingface.HFLM``; tasks keep lm-eval's
own definitions (prompts, ``doc_to_text`` / ``doc_to_choice`` / targets, metrics). Offline, each task's
own YAML config is read from lm-eval's task index and only its *data source* is overridden:
``dataset_path="json"`` with ``dataset_kwargs.data_files`` pointing at the local rows (see
``offline_tasks``), written once to a cache folder. The overridden config is handed to lm-eval as an
inline task dict, which its ``TaskManager`` builds like any other task: no fork, no patch.

Average (LLM-Pruner / FLAP tables): acc for BoolQ, PIQA, WinoGrande; acc_norm for HellaSwag, ARC-e,
ARC-c, OBQA; the unweighted mean of the 7.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HywiaError
from ..calibration.hub import decide_offline
from .offline_tasks import LOCAL_TASKS, load_local_task, write_jsonl

PAPER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
PAPER_METRIC = {"boolq": "acc", "piqa": "acc", "winogrande": "acc", "hellaswag": "acc_norm",
                "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
SHORT_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
               "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA"}
# the lm-eval task folders of the 7 (indexing only these takes ~1 s instead of ~10 s for all tasks)
TASK_FOLDERS = {"boolq": "super_glue/boolq", "piqa": "piqa", "hellaswag": "hellaswag", "winogrande": "winogrande",
                "arc_easy": "arc", "arc_challenge": "arc", "openbookqa": "openbookqa"}


@dataclass
class TaskScore:
    task: str
    acc: float | None
    acc_norm: float | None
    acc_stderr: float | None
    acc_norm_stderr: float | None
    docs: int  # documents scored (after --limit)
    split: str
    source: str  # "hub" or the local file it was read from

    @property
    def paper_score(self) -> float | None:
        return getattr(self, PAPER_METRIC.get(self.task, "acc"))


@dataclass
class ZeroShotResult:
    scores: dict[str, TaskScore]
    offline: bool
    limit: int | None
    batch_size: int | str
    lm_eval_version: str
    notes: list[str] = field(default_factory=list)

    @property
    def average(self) -> float | None:
        """Mean of the paper metric over the 7 paper tasks; None unless all 7 were run."""
        if not all(task in self.scores for task in PAPER_TASKS):
            return None
        values = [self.scores[task].paper_score for task in PAPER_TASKS]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def to_dict(self) -> dict:
        return {
            "tasks": {name: asdict(score) for name, score in self.scores.items()},
            "average": self.average,
            "average_convention": {t: PAPER_METRIC[t] for t in PAPER_TASKS},
            "offline": self.offline,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "lm_eval_version": self.lm_eval_version,
            "notes": self.notes,
        }


def resolve_tasks(spec: str) -> list[str]:
    """``paper`` -> the 7; otherwise a comma list (``paper`` may appear in it)."""
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        for task in PAPER_TASKS if name == "paper" else (name,) if name else ():
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise HywiaError("--tasks is empty; use e.g. --tasks paper or --tasks boolq,piqa")
    return tasks


def cache_dir() -> Path:
    return Path(os.environ.get("HYWIA_CACHE", Path.home() / ".cache" / "hywia")) / "tasks"


def task_manager(tasks: list[str], include_path: str | Path | None = None):
    """An lm-eval TaskManager; indexes only the paper tasks' folders when that is all that is asked."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    if include_path is None and all(task in TASK_FOLDERS for task in tasks):
        root = Path(lm_eval.tasks.__file__).parent
        folders = sorted({str(root / TASK_FOLDERS[task]) for task in tasks})
        return TaskManager(include_path=folders, include_defaults=False)
    return TaskManager(include_path=include_path)


def task_config(manager, task: str) -> dict:
    """The fully resolved YAML config of a registered lm-eval task (includes merged, !function loaded)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    yaml_path = getattr(entry, "yaml_path", None)
    if yaml_path is None:
        raise HywiaError(f"lm-eval has no YAML task named {task!r}")
    return load_yaml(yaml_path, resolve_func=True)


def local_task_spec(manager, task: str, folder: Path) -> tuple[dict, str, str]:
    """lm-eval's own config of ``task`` with only its data source pointed at the local rows."""
    local = load_local_task(task)
    path = write_jsonl(local.rows, folder / f"{task}-{local.split}.jsonl")
    config = task_config(manager, task)
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {local.split: str(path)}},
        training_split=None,
        validation_split="validation" if local.split == "validation" else None,
        test_split="test" if local.split == "test" else None,
    )
    config.pop("fewshot_split", None)
    return config, local.split, local.source


def hub_split(manager, task: str) -> str:
    config = task_config(manager, task)
    return "test" if config.get("test_split") else "validation" if config.get("validation_split") else "train"


def _metric(results: dict, name: str) -> float | None:
    value = results.get(f"{name},none")
    return float(value) if isinstance(value, (int, float)) else None


def evaluate_zeroshot(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int | str = 8,
    mode: str = "auto",
    max_length: int | None = None,
    log=print,
) -> ZeroShotResult:
    """Run lm-eval on ``tasks`` (0-shot) with the already loaded ``model`` and ``tokenizer``."""
    try:
        from lm_eval import evaluator
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise HywiaError("zero-shot evaluation needs lm-eval: pip install 'hywia[eval]'") from None

    offline, why = decide_offline(mode)
    manager = task_manager(tasks)
    specs: list = []
    origins: dict[str, tuple[str, str]] = {}
    for task in tasks:
        if offline:
            if task not in LOCAL_TASKS:
                raise HywiaError(f"task {task!r} has no local copy (offline: {why}); local tasks: {', '.join(LOCAL_TASKS)}")
            config, split, source = local_task_spec(manager, task, cache_dir())
            specs.append(config)
            origins[task] = (split, f"local {source}")
        else:
            if task not in manager.task_index:
                raise HywiaError(f"lm-eval does not know task {task!r}")
            specs.append(task)
            origins[task] = (hub_split(manager, task), "hub")
    log(f"zero-shot data: {'local copies' if offline else 'hub'} ({why})")
    for task, (split, source) in origins.items():
        log(f"  {task}: {split} split, {source}")

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    output = evaluator.simple_evaluate(
        model=lm, tasks=specs, task_manager=manager, num_fewshot=0, limit=limit, log_samples=False,
        bootstrap_iters=1000,  # acc / acc_norm stderr is closed-form; this only caps other metrics
    )
    scores = {}
    for task in tasks:
        metrics = output["results"].get(task)
        if metrics is None:
            raise HywiaError(f"lm-eval returned no result for {task}")
        docs = output.get("n-samples", {}).get(task, {}).get("effective")
        scores[task] = TaskScore(
            task, _metric(metrics, "acc"), _metric(metrics, "acc_norm"), _metric(metrics, "acc_stderr"),
            _metric(metrics, "acc_norm_stderr"), int(docs) if docs is not None else -1, *origins[task],
        )
    notes = [f"data: {why}"] + ([f"--limit {limit}: first {limit} documents of each task"] if limit else [])
    return ZeroShotResult(scores, offline, limit, batch_size, importlib.metadata.version("lm_eval"), notes)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(result: dict) -> str:
    """Per-task acc / acc_norm (%), the metric the average uses, and the split, from ``to_dict()``."""
    lines = ["| task | acc | acc_norm | used in average | docs | split | data |", "|---|---|---|---|---|---|---|"]
    for name, score in result["tasks"].items():
        metric = PAPER_METRIC.get(name, "acc")
        lines.append(f"| {name} | {_pct(score['acc'])} | {_pct(score['acc_norm'])} | "
                     f"{metric} = {_pct(score[metric])} | {score['docs']} | {score['split']} | {score['source']} |")
    average = result.get("average")
    lines.append(f"| **average (7)** | | | **{_pct(average)}** | | | |" if average is not None
                 else "| average (7) | | | needs all 7 paper tasks | | | |")
    return "\n".join(lines)
