"""Zero-shot accuracy with lm-evaluation-harness used as a library, and the paper-average convention.

Tasks keep lm-eval's own definitions (prompts, ``doc_to_text`` / ``doc_to_choice`` / targets, metrics,
``evaluator.evaluate``). Offline, each task's own YAML config is read from lm-eval's task index and only
its *data source* is overridden: ``dataset_path="json"`` with ``dataset_kwargs.data_files`` pointing at
the local rows (see ``offline_tasks``), written once to a cache folder. The overridden config is handed
to lm-eval as an inline task dict, which its ``TaskManager`` builds like any other task: no fork.

Model backends (``engine``): ``"fast"`` (default) is :class:`hywia.evaluate.loglikelihood.FastLM`, which
computes HFLM's numbers with batched tokenisation, shared prefixes and a sliced LM head; ``"hflm"`` is
lm-eval's own ``HFLM`` wrapper.

Many models in one process: the task objects are built once per process (``prepare_tasks``, keyed by the
task list and the data source), their requests are built once per ``limit`` and reused with the
responses cleared, and lm-eval's Jinja prompt templates are compiled once instead of once per document
(``lm_eval.utils.apply_template`` compiles on every call; while ``evaluate_zeroshot`` runs, the module's
Jinja environment memoises ``from_string``: same templates, same renders). Not thread-safe: the cached
task objects hold the responses of the run in progress.

Selection splits: ``SELECTION_TASKS`` (``arc_easy_val``, ``arc_challenge_val``, ``openbookqa_val``) are
ARC-Easy, ARC-Challenge and OpenBookQA with the same lm-eval definitions on their VALIDATION splits, for
choosing hyper-parameters; the reported table uses the test splits of ARC / OBQA.

Average (LLM-Pruner / FLAP tables): acc for BoolQ, PIQA, WinoGrande; acc_norm for HellaSwag, ARC-e,
ARC-c, OBQA; the unweighted mean of the 7.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HywiaError
from ..calibration.hub import decide_offline
from .offline_tasks import LOCAL_TASKS, VALIDATION_VARIANTS, base_task, load_local_task, write_jsonl

PAPER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# for choosing hyper-parameters: validation splits only, never the reported test splits
SELECTION_TASKS = tuple(VALIDATION_VARIANTS)  # ("arc_easy_val", "arc_challenge_val", "openbookqa_val")
PAPER_METRIC = {"boolq": "acc", "piqa": "acc", "winogrande": "acc", "hellaswag": "acc_norm",
                "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm",
                **{task: "acc_norm" for task in SELECTION_TASKS}}
SHORT_NAMES = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
               "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA",
               "arc_easy_val": "ARC-e val", "arc_challenge_val": "ARC-c val", "openbookqa_val": "OBQA val"}
# the lm-eval task folders of the 7 (indexing only these takes ~1 s instead of ~10 s for all tasks)
TASK_FOLDERS = {"boolq": "super_glue/boolq", "piqa": "piqa", "hellaswag": "hellaswag", "winogrande": "winogrande",
                "arc_easy": "arc", "arc_challenge": "arc", "openbookqa": "openbookqa",
                **{task: "arc" if task.startswith("arc") else "openbookqa" for task in SELECTION_TASKS}}
ENGINES = ("fast", "hflm")


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
    engine: str = "hflm"
    seconds: float | None = None  # wall time of the lm-eval run (task preparation included)
    engine_stats: dict | None = None  # fast engine: requests, rows, tokens, batches, seconds per stage

    def _mean(self, tasks) -> float | None:
        if not all(task in self.scores for task in tasks):
            return None
        values = [self.scores[task].paper_score for task in tasks]
        return None if any(v is None for v in values) else sum(values) / len(values)

    @property
    def average(self) -> float | None:
        """Mean of the paper metric over the 7 paper tasks; None unless all 7 were run."""
        return self._mean(PAPER_TASKS)

    @property
    def selection_average(self) -> float | None:
        """Mean acc_norm over the 3 validation-split selection tasks; None unless all 3 were run."""
        return self._mean(SELECTION_TASKS)

    def to_dict(self) -> dict:
        return {
            "tasks": {name: asdict(score) for name, score in self.scores.items()},
            "average": self.average,
            "average_convention": {t: PAPER_METRIC[t] for t in PAPER_TASKS},
            "selection_average": self.selection_average,
            "offline": self.offline,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "engine": self.engine,
            "seconds": self.seconds,
            "engine_stats": self.engine_stats,
            "lm_eval_version": self.lm_eval_version,
            "notes": self.notes,
        }


def resolve_tasks(spec: str) -> list[str]:
    """``paper`` -> the 7, ``selection`` -> the 3 validation-split tasks; otherwise a comma list (the two
    keywords may appear in it)."""
    groups = {"paper": PAPER_TASKS, "selection": SELECTION_TASKS}
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        for task in groups.get(name, (name,) if name else ()):
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise HywiaError("--tasks is empty; use e.g. --tasks paper, --tasks selection or --tasks boolq,piqa")
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


def _named_config(manager, task: str) -> dict:
    """lm-eval's config of ``task``; a selection variant gets its base task's config under its own name."""
    config = task_config(manager, base_task(task))
    if task != base_task(task):
        config["task"] = task
        config.pop("tag", None)  # not a member of the base task's groups (e.g. ai2_arc)
    return config


def local_task_spec(manager, task: str, folder: Path) -> tuple[dict, str, str]:
    """lm-eval's own config of ``task`` with only its data source pointed at the local rows."""
    local = load_local_task(task)
    path = write_jsonl(local.rows, folder / f"{task}-{local.split}.jsonl")
    config = _named_config(manager, task)
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


def hub_task_spec(manager, task: str) -> str | dict:
    """The hub task: its registered name, or for a selection variant its base config on the validation split."""
    if task == base_task(task):
        return task
    config = _named_config(manager, task)
    if not config.get("validation_split"):
        raise HywiaError(f"lm-eval's {base_task(task)} has no validation split")
    config.update(test_split=None)
    return config


def hub_split(manager, task: str) -> str:
    config = task_config(manager, base_task(task))
    if task != base_task(task):
        return "validation"
    return "test" if config.get("test_split") else "validation" if config.get("validation_split") else "train"


def _metric(results: dict, name: str) -> float | None:
    value = results.get(f"{name},none")
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class PreparedTasks:
    """lm-eval task objects built once per process for a task list and a data source."""

    tasks: tuple[str, ...]
    offline: bool
    loaded: dict  # TaskManager.load(): {"tasks": {name: Task}, "groups": ...}
    origins: dict[str, tuple[str, str]]  # task -> (split, source)
    seconds: float = 0.0  # time it took to build them


_PREPARED: dict[tuple, PreparedTasks] = {}


def clear_task_cache() -> None:
    """Forget the task objects built by ``prepare_tasks`` (they are rebuilt on the next call)."""
    _PREPARED.clear()


def prepare_tasks(tasks: list[str], offline: bool, why: str = "") -> PreparedTasks:
    """The lm-eval task objects of ``tasks`` (0-shot), built on the first call and reused afterwards.

    Offline every task reads its local copy; online the hub (selection variants: the validation split).
    Each task's requests are built by lm-eval on first use and then reused for the same ``limit``.
    """
    key = (tuple(tasks), offline, str(cache_dir()) if offline else None)
    if key in _PREPARED:
        return _PREPARED[key]
    start = time.perf_counter()
    manager = task_manager([base_task(task) for task in tasks])
    specs: list = []
    origins: dict[str, tuple[str, str]] = {}
    for task in tasks:
        if offline:
            if task not in LOCAL_TASKS:
                raise HywiaError(f"task {task!r} has no local copy (offline: {why}); "
                                 f"local tasks: {', '.join(LOCAL_TASKS)}")
            config, split, source = local_task_spec(manager, task, cache_dir())
            specs.append(config)
            origins[task] = (split, f"local {source}")
        else:
            if base_task(task) not in manager.task_index:
                raise HywiaError(f"lm-eval does not know task {task!r}")
            specs.append(hub_task_spec(manager, task))
            origins[task] = (hub_split(manager, task), "hub")
    with compiled_templates():
        loaded = manager.load(specs)
    for task_obj in loaded["tasks"].values():
        # what simple_evaluate(num_fewshot=0) does to each task
        if task_obj.get_config("num_fewshot") != 0:
            task_obj.set_config(key="num_fewshot", value=0)
        task_obj.set_fewshot_seed(seed=1234)
        task_obj.build_all_requests = _BuildOnce(task_obj)
    prepared = _PREPARED[key] = PreparedTasks(tuple(tasks), offline, loaded, origins, time.perf_counter() - start)
    return prepared


class _BuildOnce:
    """Stands in for one cached task's ``build_all_requests``: lm-eval's own method builds the requests the
    first time (and whenever the arguments change); later calls with the same arguments get the same
    ``Instance`` objects back with the previous model's responses cleared."""

    def __init__(self, task) -> None:
        self.task = task
        self.build = task.build_all_requests
        self.key = None
        self.instances = None

    def __call__(self, **kwargs) -> None:
        reusable = kwargs.get("chat_template") is None and not kwargs.get("cache_requests")
        key = repr(sorted(kwargs.items())) if reusable else None
        if key is not None and key == self.key and self.task.instances is self.instances:
            for instance in self.instances:
                instance.resps.clear()
                instance.filtered_resps.clear()
            return
        self.build(**kwargs)
        self.key, self.instances = key, self.task.instances


_TEMPLATE_CACHE: dict = {}


@contextlib.contextmanager
def compiled_templates():
    """Memoise ``from_string`` of lm-eval's Jinja environment while the block runs.

    ``lm_eval.utils.apply_template`` compiles its template for every document (about 90% of lm-eval's own
    time on the 7 tasks); a compiled ``jinja2.Template`` renders the same text every time, so results are
    unchanged. The environment is restored on exit.
    """
    try:
        from lm_eval import utils
    except ImportError:
        yield
        return
    env = getattr(utils, "env", None)
    if env is None or not hasattr(env, "from_string") or "from_string" in vars(env):
        yield  # no such environment, or already memoised by an enclosing call
        return
    original = env.from_string
    compile_once = _TEMPLATE_CACHE.get(id(env))
    if compile_once is None or compile_once[0] is not env:
        compile_once = _TEMPLATE_CACHE[id(env)] = (env, functools.lru_cache(maxsize=4096)(original))

    def from_string(source, globals=None, template_class=None):  # noqa: A002 - jinja2's signature
        if globals is None and template_class is None and isinstance(source, str):
            return compile_once[1](source)
        return original(source, globals, template_class)

    env.from_string = from_string
    try:
        yield
    finally:
        del env.from_string


@contextlib.contextmanager
def quiet_git_hash():
    """lm-eval logs the git commit of the working directory with ``git describe`` (``simple_evaluate``;
    ``evaluate`` as called here does not in lm-eval 0.4.13): outside a repository git prints "fatal: not a
    git repository" into the user's output. While the block runs, that one call runs with its stderr sent
    to /dev/null; lm-eval itself is not changed and everything else keeps its stderr."""
    try:
        from lm_eval import evaluator
        from lm_eval.loggers import utils as logger_utils
    except ImportError:
        yield
        return
    modules = [m for m in (evaluator, logger_utils) if callable(getattr(m, "get_git_commit_hash", None))]
    originals = {m: m.get_git_commit_hash for m in modules}

    def quiet(original):
        def get_git_commit_hash(*args, **kwargs):
            saved = os.dup(2)
            try:
                with open(os.devnull, "w") as sink:
                    os.dup2(sink.fileno(), 2)
                    return original(*args, **kwargs)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        return get_git_commit_hash

    for module, original in originals.items():
        module.get_git_commit_hash = quiet(original)
    try:
        yield
    finally:
        for module, original in originals.items():
            module.get_git_commit_hash = original


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
    engine: str = "fast",
    max_batch_tokens: int | None = None,
) -> ZeroShotResult:
    """Run lm-eval on ``tasks`` (0-shot) with the already loaded ``model`` and ``tokenizer``.

    ``engine="fast"`` (default): :class:`~hywia.evaluate.loglikelihood.FastLM`, batches bounded by
    ``max_batch_tokens``; ``engine="hflm"``: lm-eval's HFLM with ``batch_size``. Task objects and their
    requests are cached per process (see ``prepare_tasks``), so evaluating many models in a row repeats
    only the model's own work.
    """
    try:
        from lm_eval import evaluator
    except ImportError:
        raise HywiaError("zero-shot evaluation needs lm-eval: pip install 'hywia[eval]'") from None
    if engine not in ENGINES:
        raise HywiaError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")

    start = time.perf_counter()
    offline, why = decide_offline(mode)
    prepared = prepare_tasks(list(tasks), offline, why)
    log(f"zero-shot data: {'local copies' if offline else 'hub'} ({why})")
    for task, (split, source) in prepared.origins.items():
        log(f"  {task}: {split} split, {source}")

    if engine == "fast":
        from .loglikelihood import FastLM

        lm = FastLM(model, tokenizer, max_length=max_length, max_batch_tokens=max_batch_tokens)
        batching: int | str = f"<= {lm.max_batch_tokens} tokens"
    else:
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        batching = batch_size
    with compiled_templates(), quiet_git_hash():
        output = evaluator.evaluate(
            lm=lm, task_dict=prepared.loaded, limit=limit, log_samples=False,
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
            _metric(metrics, "acc_norm_stderr"), int(docs) if docs is not None else -1, *prepared.origins[task],
        )
    seconds = time.perf_counter() - start
    stats = asdict(lm.stats) if engine == "fast" else None
    log(f"zero-shot: {len(scores)} tasks in {seconds:.1f} s ({engine} engine)"
        + (f"; {_stats_line(stats)}" if stats else ""))
    notes = [f"data: {why}"] + ([f"--limit {limit}: first {limit} documents of each task"] if limit else [])
    return ZeroShotResult(scores, offline, limit, batching, importlib.metadata.version("lm_eval"), notes,
                          engine=engine, seconds=seconds, engine_stats=stats)


def _stats_line(stats: dict) -> str:
    times = ", ".join(f"{k} {v:.1f} s" for k, v in stats["seconds"].items())
    return (f"{stats['requests']} requests, {stats['unique_requests']} distinct, {stats['rows']} model rows, "
            f"{stats['tokens']} tokens ({stats['padded_tokens']} padded) in {stats['batches']} batches, "
            f"{stats['scored_positions']} scored positions, sliced head {stats['sliced_head']}, "
            f"plan cached {stats['plan_cached']}; {times}")


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
    if any(name in PAPER_TASKS for name in result["tasks"]) or not result["tasks"]:
        lines.append(f"| **average (7)** | | | **{_pct(average)}** | | | |" if average is not None
                     else "| average (7) | | | needs all 7 paper tasks | | | |")
    if result.get("selection_average") is not None:
        lines.append(f"| selection average (3, validation) | | | {_pct(result['selection_average'])} | | | |")
    return "\n".join(lines)
