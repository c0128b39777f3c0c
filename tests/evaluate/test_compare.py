"""Results stored next to a model, and the side-by-side report (table + PNG)."""

import json

import pytest

from hywia.evaluate.compare import collect, markdown_comparison, plot_comparison
from hywia.errors import HywiaError
from hywia.evaluate.results import load_results, merge_results, save_results
from hywia.evaluate.zeroshot import PAPER_TASKS


def _zeroshot(acc, limit=None):
    tasks = {t: {"task": t, "acc": acc, "acc_norm": acc + 0.1, "acc_stderr": None, "acc_norm_stderr": None,
                 "docs": 10, "split": "test", "source": "local"} for t in PAPER_TASKS}
    return {"tasks": tasks, "average": (3 * acc + 4 * (acc + 0.1)) / 7, "limit": limit, "notes": ["n"],
            "lm_eval_version": "0.4.13"}


def _model(tmp_path, name, acc, pruned=False):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ppl = {"perplexity": 25.5, "mean_nll": 3.2, "window": 128, "windows": 128, "tokens_scored": 16256,
           "text": "boolq-passages"}
    results = merge_results({}, model=str(folder), parameters=1000, perplexities=[ppl], zeroshot=_zeroshot(acc),
                            command="hywia eval")
    save_results(folder, results)
    if pruned:
        report = {"recipe": {"method": "element1"}, "parameters": {"after": 800, "achieved_ratio": 0.2}}
        (folder / "hywia_report.json").write_text(json.dumps(report))
    return folder


def test_results_merge_keeps_other_sections(tmp_path):
    folder = _model(tmp_path, "dense", 0.5)
    old = load_results(folder)
    merged = merge_results(old, model="m", parameters=1, perplexities=[], zeroshot=None, command="c")
    assert merged["zeroshot"] == old["zeroshot"] and "boolq-passages@128" in merged["perplexity"]
    assert (folder / "eval" / "results.md").read_text().count("| boolq |") == 1
    assert (folder / "config.json").read_text() == "{}"


def test_report_table_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    dense, pruned = _model(tmp_path, "dense", 0.5), _model(tmp_path, "pruned", 0.4, pruned=True)
    rows = collect([str(dense), str(pruned)])
    table = markdown_comparison(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| model | method | removed | params | PPL boolq-passages@128 | BoolQ |")
    assert "| pruned | element1 | 20.0% | 1,000 | 25.50 | 40.00 |" in table  # acc for BoolQ
    assert lines[2].endswith(f"| {100 * (1.5 + 2.4) / 7:.2f} |")
    png = plot_comparison(rows, tmp_path / "out" / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rejects_folders_without_results(tmp_path):
    with pytest.raises(HywiaError):
        collect([str(tmp_path)])


def test_chart_of_perplexity_only_models_and_nothing_to_plot(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "ppl-only"
    folder.mkdir()
    ppl = {"perplexity": 166.4, "mean_nll": 5.1, "window": 128, "windows": 128, "tokens_scored": 16256,
           "text": "boolq-passages"}
    save_results(folder, merge_results({}, model="m", parameters=10, perplexities=[ppl], zeroshot=None, command="c"))
    png = plot_comparison(collect([str(folder)]), tmp_path / "ppl.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "hywia_report.json").write_text(json.dumps({"recipe": {"method": "l2"}, "parameters": {"after": 5}}))
    with pytest.raises(HywiaError, match="nothing to plot"):
        plot_comparison(collect([str(bare)]), tmp_path / "none.png")
