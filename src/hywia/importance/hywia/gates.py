"""Soft gates on units without copying weights: a forward pre-hook scales each unit's input slice of
the output projection (o_proj for heads / KV groups, down_proj for MLP channels). With a substitution
matrix P for the group set (``substitution``), a gated-off unit's inputs are replaced by their compensated
stand-in: h~ = m h + (1 - m) P h."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...models.adapters import ModelAdapter
from ...models.groups import GroupSet


class UnitGates:
    """Holds one mask per group set; ``masks[key]`` may be replaced at every step."""

    def __init__(self):
        self.masks: dict[tuple[int, str], torch.Tensor] = {}
        self.substitutions: dict[tuple[int, str], torch.Tensor] = {}

    def hook_for(self, key: tuple[int, str], num_units: int):
        def scale_units(_module, args):
            mask = self.masks.get(key)
            if mask is None:
                return None
            hidden = args[0]
            mask = mask.to(device=hidden.device, dtype=hidden.dtype)
            substitution = self.substitutions.get(key)
            if substitution is not None:
                columns = mask.repeat_interleave(hidden.shape[-1] // num_units)
                stand_in = hidden @ substitution.to(device=hidden.device, dtype=hidden.dtype).T
                return (hidden * columns + stand_in * (1 - columns), *args[1:])
            shaped = hidden.unflatten(-1, (num_units, -1))
            gated = shaped * mask[:, None]
            return (gated.flatten(-2), *args[1:])

        return scale_units


@contextmanager
def gated(model: nn.Module, adapter: ModelAdapter, group_sets: list[GroupSet]):
    """Install gates on every group set for the duration of the block; yields the ``UnitGates``."""
    gates = UnitGates()
    handles = []
    try:
        for gs in group_sets:
            module = model.get_submodule(adapter.unit_output_module(gs.layer, gs.kind))
            handles.append(module.register_forward_pre_hook(gates.hook_for(gs.key, gs.num_units)))
        yield gates
    finally:
        for handle in handles:
            handle.remove()
