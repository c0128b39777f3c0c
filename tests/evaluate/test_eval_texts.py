"""Which perplexity texts are scored (METHOD.md section 5), hub fallbacks, and the eval command storing each."""

import json

import pytest

from hywia.cli import main
from hywia.calibration.texts import DEFAULT_EVALUATION, PARQUET_EXPORT, default_eval_tokens, hub_text, resolve_eval_texts
from hywia.errors import HywiaError
from hywia.evaluate.results import load_results

from conftest import tiny_text


def test_paper_texts_follow_the_hub_decision():
    assert resolve_eval_texts(None, offline=False, why="hub reachable") == (["boolq-passages", "wikitext2", "ptb"], None)
    names, note = resolve_eval_texts("paper", offline=True, why="hub not reachable")
    assert names == ["boolq-passages"]
    assert "wikitext2, ptb skipped (hub not reachable)" in note


def test_explicit_texts_are_kept_in_order_once():
    names, note = resolve_eval_texts("a.txt, wikitext2,a.txt", offline=True, why="--offline")
    assert names == ["a.txt", "wikitext2"] and note is None  # asked by name: tried, never skipped silently
    with pytest.raises(HywiaError, match="no perplexity text"):
        resolve_eval_texts(" , ", offline=False, why="")


def test_default_token_budget():
    assert default_eval_tokens(DEFAULT_EVALUATION) == 16384
    assert default_eval_tokens("wikitext2") is None and default_eval_tokens("my.txt") is None


def test_hub_text_falls_back_to_the_parquet_export():
    calls = []

    def fake_load(dataset, config, split, revision):
        calls.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported")
        return {"sentence": ["a b", "c d"]}

    assert hub_text("ptb", load_dataset=fake_load) == "a b c d"  # PTB sentences joined by spaces
    assert calls == [None, PARQUET_EXPORT]


def test_hub_text_failure_is_one_clear_line():
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    with pytest.raises(HywiaError) as error:
        hub_text("wikitext2", load_dataset=offline)
    message = str(error.value)
    assert "\n" not in message and "wikitext2" in message and "ConnectionError" in message
    assert "refs/convert/parquet" in message


def test_eval_scores_and_stores_every_text(capsys, tmp_path, tiny_model_dir):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(tiny_text(600, seed=1))
    second.write_text(tiny_text(300, seed=2))
    code = main(["eval", "--model", str(tiny_model_dir), "--text", f"{first},{second}", "--window", "16", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    stored = load_results(tiny_model_dir)["perplexity"]
    assert set(stored) == {f"{first}@16", f"{second}@16"}
    assert stored[f"{first}@16"]["windows"] == 600 // 16  # files are scored whole by default
    assert stored[f"{second}@16"]["tokens_scored"] == (300 // 16) * 15
    assert out.count('"perplexity"') == 2


def test_eval_offline_default_scores_the_local_text_and_says_what_it_skipped(capsys, tiny_model_dir):
    code = main(["eval", "--model", str(tiny_model_dir), "--offline", "--eval-tokens", "64", "--window", "16", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "wikitext2, ptb skipped (--offline)" in captured.err
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert [entry["text"] for entry in lines] == ["boolq-passages"] and lines[0]["windows"] == 4
