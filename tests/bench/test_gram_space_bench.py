"""bench/gram_space.py on small shapes: one JSON line with the sequential times and the ridge solve's row."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def test_small_shapes_report_times_and_errors(capsys):
    spec = importlib.util.spec_from_file_location("gram_space_bench", BENCH / "gram_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--d-model", "64", "--d-mlp", "96", "--d-mlp-sequential", "48", "--head", "16"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["sequential_mlp_s"] >= 0 and row["sequential_attention_s"] >= 0
    before, after = row["ridge"]["errors"]
    assert 0 < after < before and row["ridge"]["gram_mb"] == round(96 * 96 * 8 / 2**20)
