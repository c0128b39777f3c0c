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


def test_resolve_selection_keyword():
    from hywia.evaluate.zeroshot import SELECTION_TASKS

    assert resolve_tasks("selection") == list(SELECTION_TASKS)
    assert resolve_tasks("paper,selection") == list(PAPER_TASKS) + list(SELECTION_TASKS)


@pytest.mark.slow
def test_fast_engine_matches_hflm_on_all_tasks_and_reuses_tasks():
    """The 7 paper tasks and the 3 selection tasks, first 3 docs each: the fast engine gives HFLM's acc and
    acc_norm on two different models evaluated in a row, with the task objects and requests built once."""
    from tiny import byte_tokenizer, tiny_llama

    from hywia.evaluate import zeroshot
    from hywia.evaluate.zeroshot import SELECTION_TASKS, evaluate_zeroshot, prepare_tasks

    tasks = list(PAPER_TASKS) + list(SELECTION_TASKS)
    run = dict(limit=3, batch_size=5, mode="offline", log=lambda *_: None)
    tokenizer = byte_tokenizer()
    prepared = prepare_tasks(tasks, True)
    assert prepare_tasks(tasks, True) is prepared  # cached per process
    first_instances = None
    for seed in (0, 1):
        model = tiny_llama(seed=seed)
        fast = evaluate_zeroshot(model, tokenizer, tasks, engine="fast", **run)
        hflm = evaluate_zeroshot(model, tokenizer, tasks, engine="hflm", **run)
        assert fast.engine == "fast" and hflm.engine == "hflm"
        for task in tasks:
            ours, ref = fast.scores[task], hflm.scores[task]
            assert (ours.acc, ours.acc_norm, ours.docs) == (ref.acc, ref.acc_norm, ref.docs) == (
                ref.acc, ref.acc_norm, 3), task
        boolq = prepared.loaded["tasks"]["boolq"]
        if first_instances is None:
            first_instances = boolq.instances
        assert boolq.instances is first_instances  # requests built once, responses replaced per model
        assert all(len(instance.resps) == 1 for instance in boolq.instances)
    assert {fast.scores[t].split for t in SELECTION_TASKS} == {"validation"}
    assert {fast.scores[t].split for t in ("arc_easy", "arc_challenge", "openbookqa")} == {"test"}
    assert fast.selection_average is not None and fast.average is not None
    assert "selection average" in markdown_table(fast.to_dict())
    assert zeroshot.prepare_tasks(tasks, True) is prepared


@pytest.mark.slow
def test_selection_tasks_load_validation_docs_through_lm_eval():
    """lm-eval's task objects of the selection variants hold the 570 / 299 / 500 validation docs, with the
    base task's prompts, and none of the reported test docs."""
    from hywia.evaluate.zeroshot import SELECTION_TASKS, prepare_tasks

    pairs = {"arc_easy_val": "arc_easy", "arc_challenge_val": "arc_challenge", "openbookqa_val": "openbookqa"}
    loaded = prepare_tasks(list(SELECTION_TASKS) + list(pairs.values()), True).loaded["tasks"]
    sizes = {task: len(list(loaded[task].eval_docs)) for task in SELECTION_TASKS}
    assert sizes == {"arc_easy_val": 570, "arc_challenge_val": 299, "openbookqa_val": 500}
    for val, test in pairs.items():
        val_task, test_task = loaded[val], loaded[test]
        assert not val_task.has_test_docs() and val_task.has_validation_docs() and test_task.has_test_docs()
        assert len(list(test_task.eval_docs)) in (2376, 1172, 500)
        assert {d["id"] for d in val_task.eval_docs}.isdisjoint(d["id"] for d in test_task.eval_docs)
        doc = next(iter(val_task.eval_docs))
        # the same lm-eval definition: the base task's prompt, choices and target on the validation doc
        assert val_task.config.doc_to_text == test_task.config.doc_to_text
        assert val_task.doc_to_text(doc) == test_task.doc_to_text(doc)
        assert val_task.doc_to_choice(doc) == test_task.doc_to_choice(doc)


def test_compiled_templates_render_the_same_and_restore():
    from lm_eval import utils

    from hywia.evaluate.zeroshot import compiled_templates

    doc = {"question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    templates = ["Question: {{question}}\nAnswer:", "{{choices.label.index(answerKey)}}", "{{choices.text}}"]
    plain = [utils.apply_template(t, doc) for t in templates]
    with compiled_templates():
        assert "from_string" in vars(utils.env)
        with compiled_templates():  # nested: no second wrapper
            cached = [utils.apply_template(t, doc) for t in templates * 2]
    assert cached == plain * 2
    assert "from_string" not in vars(utils.env)


def test_unknown_engine():
    from hywia.evaluate.zeroshot import evaluate_zeroshot

    with pytest.raises(HywiaError, match="engine"):
        evaluate_zeroshot(None, None, ["boolq"], engine="vllm", mode="offline")
