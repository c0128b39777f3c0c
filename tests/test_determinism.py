"""Same seed -> the same kept units on the CPU, whatever the number of threads."""

import pytest
import torch

from conftest import build_tiny
from hywia import PruneConfig, prune


def kept_units(method: str, threads: int, calib_ids, **options) -> list:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = PruneConfig(ratio=0.3, method=method, reconstruct=False, progress=False, seed=7, **options)
        report = prune(build_tiny("llama-gqa"), None, config, calibration_ids=calib_ids).report
    finally:
        torch.set_num_threads(previous)
    return [(e["layer"], e["attn"]["kept"], e["mlp"]["kept"]) for e in report["layers"]]


@pytest.mark.parametrize("method,options", [
    ("element1", {}),
    ("random", {}),
    ("hywia", {"method_options": {"steps": 3}}),
    ("hywia", {"method_options": {"steps": 3}, "allocation": "global"}),
])
def test_thread_count_does_not_change_the_kept_units(calib_ids, method, options):
    one = kept_units(method, 1, calib_ids, **options)
    assert kept_units(method, 2, calib_ids, **options) == one
    assert kept_units(method, 1, calib_ids, **options) == one
