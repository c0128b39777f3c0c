"""bench/fusion_step.py on the CPU with a tiny shape: one JSON row with the unit count and a step time."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def test_fusion_step_reports_units_and_time(tmp_path):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("fusion_step", BENCH / "fusion_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "step.json"
    module.main(["--shape", "tiny", "--steps", "2", "--json", str(out)])
    row = json.loads(out.read_text())
    # tiny shape: 2 layers x (2 KV groups + 128 MLP channels)
    assert row["units"] == 2 * (2 + 128) and row["group_sets"] == 4 and row["step_ms"] > 0
