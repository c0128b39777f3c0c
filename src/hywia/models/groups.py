"""Coupled structures: the weight slices that must be removed together.

A layer of a transformer has two *group sets*:

* ``attn`` -- one unit per KV head. With MHA a unit is one head; with GQA it is one KV head plus the
  ``r = n_heads / n_kv_heads`` query heads that share it (transformers' layout: query head ``i`` uses
  KV head ``i // r``, so those query heads are contiguous rows of ``q_proj``).
* ``mlp`` -- one unit per intermediate channel (a row of gate and up, a column of down).

Every member weight is cut into ``num_units`` *contiguous blocks* along one dimension, so a unit's
slice of a member is ``block(unit) = [unit * unit_size, (unit + 1) * unit_size)`` along ``dim``. This
covers every layout we know, including fused q/k/v where the fused rows of a head are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ATTN = "attn"
MLP = "mlp"
KINDS = (ATTN, MLP)


@dataclass(frozen=True)
class Member:
    """One coupled tensor of a group set: ``module.<param>`` cut into blocks along ``dim``."""

    module: str  # dotted path below the model, e.g. "model.layers.3.self_attn.q_proj"
    param: str  # "weight" or "bias"
    dim: int
    unit_size: int


@dataclass
class GroupSet:
    """All removable units of one kind in one layer, with the slices each unit owns."""

    layer: int
    kind: str
    num_units: int
    members: list[Member] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, str]:
        return (self.layer, self.kind)

    def params_per_unit(self, model: nn.Module) -> int:
        """Number of parameters one unit owns across all coupled tensors."""
        total = 0
        for member in self.members:
            tensor = get_tensor(model, member)
            total += tensor.numel() // self.num_units
        return total

    def element_indices(self, member: Member, units: torch.Tensor) -> torch.Tensor:
        """Indices along ``member.dim`` of the elements owned by ``units`` (sorted unit ids)."""
        offsets = torch.arange(member.unit_size, device=units.device)
        return (units[:, None] * member.unit_size + offsets[None, :]).reshape(-1)


def get_tensor(model: nn.Module, member: Member) -> torch.Tensor:
    return getattr(model.get_submodule(member.module), member.param)


def unit_view(tensor: torch.Tensor, dim: int, num_units: int) -> torch.Tensor:
    """Reshape ``tensor`` to ``[num_units, elements_per_unit]`` following the block layout of ``dim``."""
    moved = tensor.movedim(dim, 0)
    return moved.reshape(num_units, -1)


def row_view(tensor: torch.Tensor, dim: int, num_units: int) -> torch.Tensor:
    """``[num_units, rows_per_unit, row_length]``: the unit's slices along ``dim`` (its weight rows for
    ``dim=0``, its columns for ``dim=1``; single elements for a bias), each with its full extent."""
    moved = tensor.movedim(dim, 0)
    return moved.reshape(num_units, moved.shape[0] // num_units, -1)
