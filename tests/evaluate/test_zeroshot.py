"""lm-eval as a library on a tiny random model, a tiny local task, and the paper-average convention."""

from pathlib import Path

import pytest

from hywia.errors import HywiaError
from hywia.calibration.hub import decide_offline
from hywia.evaluate.zeroshot import PAPER_TASKS, TaskScore, ZeroShotResult, markdown_table, resolve_tasks

lm_eval = pytest.importorskip("lm_eval")
DATA = Path(__file__).parents[1] / "data" / "tiny_task.jsonl"


def tiny_task_config() -> dict:
    return {
        "task": "hywia_tiny",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(DATA)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def test_tiny_local_task_through_lm_eval():
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from tiny import byte_tokenizer, tiny_llama

    lm = HFLM(pretrained=tiny_llama(), tokenizer=byte_tokenizer(), batch_size=4)
    output = evaluator.simple_evaluate(model=lm, tasks=[tiny_task_config()], limit=4, num_fewshot=0,
                                       task_manager=TaskManager(include_defaults=False), log_samples=False)
    metrics = output["results"]["hywia_tiny"]
    assert output["n-samples"]["hywia_tiny"]["effective"] == 4
    for name in ("acc,none", "acc_norm,none"):
        assert metrics[name] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.slow
def test_paper_tasks_offline_end_to_end():
    """All 7 lm-eval tasks on their local copies, 2 documents each (~15 s with the task index)."""
    from tiny import byte_tokenizer, tiny_llama

    from hywia.evaluate.zeroshot import evaluate_zeroshot

    result = evaluate_zeroshot(tiny_llama(), byte_tokenizer(), list(PAPER_TASKS), limit=2, batch_size=4,
                               mode="offline", log=lambda *_: None)
    assert set(result.scores) == set(PAPER_TASKS)
    assert {result.scores[t].split for t in ("arc_easy", "arc_challenge", "openbookqa")} == {"test"}
    assert all(s.docs == 2 for s in result.scores.values())
    assert result.average is not None


def test_resolve_tasks():
    assert resolve_tasks("paper") == list(PAPER_TASKS)
    assert resolve_tasks("piqa, paper") == ["piqa"] + [t for t in PAPER_TASKS if t != "piqa"]
    with pytest.raises(HywiaError):
        resolve_tasks(" , ")


def test_decide_offline(monkeypatch):
    assert decide_offline("offline") == (True, "--offline")
    assert decide_offline("online") == (False, "--online")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert decide_offline("auto")[0] is True


def _score(task, acc, acc_norm):
    return TaskScore(task, acc, acc_norm, None, None, 10, "test", "local")


def test_average_uses_acc_or_acc_norm_per_task():
    norm = {"hellaswag", "arc_easy", "arc_challenge", "openbookqa"}
    scores = {t: _score(t, 0.1, 0.9) if t in norm else _score(t, 0.5, None) for t in PAPER_TASKS}
    result = ZeroShotResult(scores, True, None, 8, "x")
    assert result.average == pytest.approx((3 * 0.5 + 4 * 0.9) / 7)
    assert "**" in markdown_table(result.to_dict())
    del scores["boolq"]
    assert ZeroShotResult(scores, True, None, 8, "x").average is None
