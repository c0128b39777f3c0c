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


def test_recipe_from_picks_the_lowest_held_out_perplexity(tmp_path):
    rows = [
        {"model": "m", "stage": "dense", "val_ppl": 1.0},
        {"model": "m", "stage": "distill", "recipe_label": "lr=1e-4", "val_ppl": 30.0, "val_mc_avg": 40.0},
        {"model": "m", "stage": "distill", "recipe_label": "lr=5e-4 batch_size=32", "val_ppl": 25.0, "val_mc_avg": 30.0},
        {"model": "m", "stage": "distill", "recipe_label": "lr=1e-3", "val_ppl": 25.0, "val_mc_avg": 31.0},
        {"model": "other", "stage": "distill", "recipe_label": "rank=64", "val_ppl": 2.0},
    ]
    path = tmp_path / "sweep.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_script().chosen_recipe(path, "m") == "lr=1e-3"


def test_recovery_step_bench_times_steps_of_both_objectives(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("recovery_step_bench", BENCH / "recovery_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "steps.json"
    assert module.main(["--tiny", "--steps", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["objective"] for r in rows] == ["distill", "lm"]
    assert all(r["step_s"] > 0 and r["examples_per_step"] == 4 and r["micro_batch"] >= 1 for r in rows)


def test_skip_dense_leaves_out_the_dense_row_and_the_gap(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert load_script().main(["--tiny", "--ratios", "0.2", "--methods", "flap", "--objectives", "lm",
                               "--skip-dense", "--out-jsonl", str(out)]) == 0
    assert [json.loads(line)["stage"] for line in out.read_text().splitlines()] == ["pruned", "lm"]
    lm_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20% | flap | lm"))
    assert lm_line.split("|")[9].strip() == ""  # no dense row: no gap closed


def test_recipe_values_take_the_config_fields_types():
    class Args:
        tiny, max_steps, recipe = False, None, ["micro_batch_size=8", "lr=1e-3", "data=reading-passages"]

    config = load_script().recipe(Args, "lm", "rank=32")
    assert (config.micro_batch_size, config.lr, config.rank, config.data) == (8, 1e-3, 32, "reading-passages")
    assert isinstance(config.micro_batch_size, int) and isinstance(config.rank, int)


def test_seeds_table_averages_each_stage_over_the_seeds_it_has(tmp_path, capsys):
    rows = [
        {"stage": "dense", "ratio": None, "method": None, "boolq_ppl": 25.0},
        {"stage": "pruned", "ratio": 0.2, "method": "flap", "seed": 0, "boolq_ppl": 50.0, "val_ppl": 70.0, "mc_avg": 40.0},
        {"stage": "pruned", "ratio": 0.2, "method": "flap", "seed": 1, "boolq_ppl": 54.0, "val_ppl": 72.0, "mc_avg": 42.0},
        {"stage": "distill", "ratio": 0.2, "method": "flap", "seed": 0, "boolq_ppl": 38.0, "val_ppl": 61.0},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_script().main(["--seeds-table", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20%")]
    assert lines[0] == "| 20% | flap | pruned | 52.00 ± 2.83 (n=2) | 71.00 ± 1.41 (n=2) |  | 41.00 ± 1.41 (n=2) |"
    assert lines[1] == "| 20% | flap | distill | 38.00 (n=1) | 61.00 (n=1) |  |  |"
