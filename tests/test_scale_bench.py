"""bench/scale.py at a tiny shape on the CPU: one markdown row per run, every stage of each method timed."""

import importlib.util
import time
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("scale_bench", Path(__file__).parents[1] / "bench" / "scale.py")
scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale)


def test_tiny_run_prints_a_row_per_method_and_ratio(capsys):
    assert scale.main(["--tiny", "--methods", "element1", "flap", "hywia", "--ratios", "0.2", "0.5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(lines) == 6
    cells = {(c[1], c[2]): c for c in (line.split(" | ") for line in lines)}  # c[0] = "| tiny"
    assert len(cells) == 6
    stages = {stage: 3 + i for i, stage in enumerate(scale.STAGES)}
    for (method, _), row in cells.items():
        has = {stage: row[column] != "-" for stage, column in stages.items()}
        assert has["load"] and has["save"] and has["surgery"] and has["reconstruction"]
        assert has["gradients"] == (method in ("element1", "hywia")) and has["fusion"] == (method == "hywia")


def test_stage_clock_nests_and_restores_the_wrapped_functions():
    import hywia.pipeline as pipeline

    original = pipeline.apply_keep
    clock = scale.StageClock([torch.device("cpu")])
    with clock.stage("outer"):
        with clock.stage("inner"):
            time.sleep(0.02)
    assert clock.seconds["outer"] >= clock.seconds["inner"] >= 0.02
    with scale.timed_pipeline(clock):
        assert pipeline.apply_keep is not original
    assert pipeline.apply_keep is original


def test_rows_on_two_gpus_report_each_gpus_peak_over_its_own_weights():
    gib = 2**30
    timing = {"seconds": {"load": 1.0, "gradients": 2.0, "scoring, other": 3.0, "save": 1.0},
              "device_peaks": {"load": [10 * gib, 8 * gib], "gradients": [12 * gib, 11 * gib],
                               "scoring, other": [11 * gib, 9 * gib], "save": [13 * gib, 8 * gib]},
              "weight_bytes": [10 * gib, 8 * gib], "devices": ["cuda:0", "cuda:1"], "reload": None}
    cells = [c.strip() for c in scale.row("s", "hywia", 0.2, timing, cuda=True).strip("|").split("|")]
    # peak over the run: GPU0 13/10 = 1.30x, GPU1 11/8 = 1.375x; while pruning: 12/10 and 11/8 -> 1.375x
    assert cells[-4:] == ["13.0", "1.38x", "5.0", "1.38x"]
    lines = scale.device_lines(timing)
    assert lines[0] == "  cuda:0: weights 10.0 GB, prune peak 12.0 GB (1.20x), run peak 13.0 GB"
    assert lines[1] == "  cuda:1: weights 8.0 GB, prune peak 11.0 GB (1.38x), run peak 11.0 GB"
    assert scale.device_lines({**timing, "devices": ["cuda:0"]}) == []
