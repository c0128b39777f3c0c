"""bench/eager_probe.py on a tiny saved model on the CPU: per-step timings and a profile for each model."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def test_probe_writes_timings_and_profiles(tmp_path, tiny_model_dir):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("eager_probe", BENCH / "eager_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "probe.json"
    module.main([str(tiny_model_dir), str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--batch-sizes",
                 "1", "--prompt-len", "8", "--steps", "3", "--rounds", "2", "--json", str(out)])
    entries = json.loads(out.read_text())["batches"]["1"]
    assert len(entries) == 2
    for entry in entries:
        assert len(entry["step_ms_all"]) == 2 and entry["step_ms"] >= entry["issue_ms"] > 0
        assert entry["cpu_ops"] and entry["kernels_per_step"] == 0  # no CUDA kernels on the CPU
