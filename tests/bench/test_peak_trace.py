"""bench/scale.py's reading of a CUDA allocator trace: the live set at the peak, by allocating line."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from scale import peak_allocations  # noqa: E402


def frames(name, line):
    return [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "f"},
            {"filename": f"/site/hywia/{name}", "line": line, "name": "g"}]


def test_live_set_at_the_peak_by_line():
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": frames("a.py", 10)},
        {"action": "alloc", "addr": 2, "size": 50, "frames": frames("b.py", 20)},
        {"action": "free_requested", "addr": 2, "size": 50},  # not freed yet: still counted
        {"action": "alloc", "addr": 3, "size": 30, "frames": frames("a.py", 10)},  # peak: 100 + 50 + 30
        {"action": "free_completed", "addr": 2, "size": 50},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 4, "size": 120, "frames": frames("c.py", 5)},  # 150: below the peak
        {"action": "free_completed", "addr": 99, "size": 7},  # allocated before the trace: 143 now
        {"action": "alloc", "addr": 5, "size": 35, "frames": frames("c.py", 5)},  # 178; 185 (a new peak) were
        {"action": "free_completed", "addr": 5, "size": 35},                      # the 7 not subtracted
    ]
    result = peak_allocations(trace)
    assert result["peak_over_start_bytes"] == 180
    assert result["live_at_peak"] == [{"where": "a.py:10 g", "bytes": 130}, {"where": "b.py:20 g", "bytes": 50}]


def test_freeing_older_tensors_is_not_growth():
    """Surgery: new smaller weights are allocated while the old ones (from before the trace) are freed."""
    trace = [{"action": "alloc", "addr": 1, "size": 60, "frames": frames("surgery.py", 3)},
             {"action": "free_completed", "addr": 100, "size": 100},
             {"action": "alloc", "addr": 2, "size": 60, "frames": frames("surgery.py", 3)},
             {"action": "free_completed", "addr": 101, "size": 100}]
    assert peak_allocations(trace)["peak_over_start_bytes"] == 60
