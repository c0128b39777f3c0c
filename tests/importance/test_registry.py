"""One registry: a method registered from outside the package is usable by the pipeline right away."""

from __future__ import annotations

import torch

from conftest import build_tiny
from hywia import PruneConfig, prune
from hywia.importance import METHODS, MethodSpec, ScoreResult, register_method
from hywia.models.adapters import get_adapter
from hywia.models.groups import MLP


def test_registered_method_drives_the_pruning():
    def prefer_last_units(context):
        # score = unit index: the highest-numbered units are kept
        return ScoreResult({gs.key: torch.arange(gs.num_units, dtype=torch.float32) for gs in context.group_sets})

    register_method(MethodSpec("test-last-units", "none", "keeps the last units", prefer_last_units))
    try:
        model = build_tiny("llama-mha")
        before = get_adapter(model).widths(0).intermediate_size
        result = prune(model, None, PruneConfig(reconstruct=False, ratio=0.2, method="test-last-units", progress=False))
        after = get_adapter(model).widths(0).intermediate_size
        assert after < before
        assert result.report["layers"][0][MLP]["kept"] == list(range(before - after, before))
    finally:
        METHODS.pop("test-last-units")
