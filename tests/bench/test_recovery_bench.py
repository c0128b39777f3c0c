"""bench/recovery.py on a tiny random Llama on the CPU: dense, pruned, lm and distill rows, and the table."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def load_script():
    sys.path.insert(0, str(BENCH))  # the script imports benchlib and quality as siblings
    spec = importlib.util.spec_from_file_location("recovery_bench", BENCH / "recovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_a_row_per_stage_and_a_table(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert load_script().main(["--tiny", "--ratios", "0.2", "--methods", "flap", "--out-jsonl", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["dense", "pruned", "lm", "distill"]
    for row in rows[2:]:
        assert row["steps"] == 2 and row["tokens_seen"] > 0 and row["data"]["source"] == "reading-passages"
        assert row["recipe"]["objective"] == row["stage"] and row["peak_mb"] is None
    assert all(len(r["mc_tasks"]) == 7 and r["docs_limit"] == 4 for r in rows)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20% | flap")]
    assert len(table) == 3
