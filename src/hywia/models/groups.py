"""Coupled structures: the weight slices that must be removed together.

A layer of a transformer has two *group sets*:

* ``attn`` -- one unit per KV head. With MHA a unit is one head; with GQA it is one KV head plus the
  ``r = n_heads / n_kv_heads`` query heads that share it (transformers' layout: query head ``i`` uses
  KV head ``i // r``, so those query heads are contiguous rows of ``q_proj``).
* ``mlp`` -- one unit per intermediate channel (a row of gate and up, a column of down).

Every member weight is cut into ``num_units`` *contiguous blocks* along one dimension, so a unit's
slice of a member is ``block(unit) = [unit * unit_size, (unit + 1) * unit_size)`` along ``dim``. This
covers the separate projections of Llama-like models and fused q/k/v whose rows are interleaved per
head (Bloom: ``[num_heads, 3, head_dim]``).

A *fused* member holds several parts one after the other along ``dim`` (Phi-3's ``qkv_proj``: all query
rows, then all key rows, then all value rows; ``gate_up_proj``: gate rows, then up rows; Baichuan's
``W_pack``). Its ``parts`` list ``(start, size)`` per part: a unit owns ``size`` elements of every part,
``[start + unit * size, start + (unit + 1) * size)``, so its index map along ``dim`` is explicit.
Consumers never need to know: ``element_indices`` gives a unit set's indices in the tensor's own
(fused) order, for slicing, and ``Member.unit_blocks`` reorders a tensor so that each unit's elements
are one contiguous block, for ``unit_view`` / ``row_view``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ATTN = "attn"
MLP = "mlp"
KINDS = (ATTN, MLP)


def block_indices(units: torch.Tensor, size: int, start: int = 0) -> torch.Tensor:
    """``[len(units), size]``: the indices of each unit's contiguous block of ``size`` along one dimension,
    ``start + unit * size + (0 .. size - 1)``."""
    units = units.to(torch.long).reshape(-1)
    return start + units[:, None] * size + torch.arange(size, device=units.device)[None, :]


def unit_columns(units: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Input columns of an output projection (o_proj / down_proj) owned by ``units``, in unit order."""
    return block_indices(units, unit_size).reshape(-1)


@dataclass(frozen=True)
class Member:
    """One coupled tensor of a group set: ``module.<param>`` cut into blocks along ``dim``."""

    module: str  # dotted path below the model, e.g. "model.layers.3.self_attn.q_proj"
    param: str  # "weight" or "bias"
    dim: int
    unit_size: int  # elements one unit owns along ``dim`` (over all parts of a fused member)
    parts: tuple[tuple[int, int], ...] = ()  # fused: (start, size) of each part along ``dim``; () = one block

    @classmethod
    def fused(cls, module: str, param: str, dim: int, parts: list[tuple[int, int]]) -> "Member":
        """A member whose units own ``size`` elements of each ``(start, size)`` part along ``dim``."""
        return cls(module, param, dim, sum(size for _, size in parts), tuple((int(a), int(b)) for a, b in parts))

    def _layout(self) -> tuple[tuple[int, int], ...]:
        return self.parts or ((0, self.unit_size),)

    def element_indices(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along ``dim`` of the elements owned by ``units``, part by part in the tensor's order
        (slicing with them keeps a fused tensor fused: all kept query rows, then all kept key rows ...)."""
        return torch.cat([block_indices(units, size, start).reshape(-1) for start, size in self._layout()])

    def unit_order(self, num_units: int) -> torch.Tensor:
        """``[num_units * unit_size]``: the indices along ``dim`` grouped unit by unit (the index map)."""
        units = torch.arange(num_units)
        return torch.cat([block_indices(units, size, start) for start, size in self._layout()], dim=1).reshape(-1)

    def unit_blocks(self, tensor: torch.Tensor, num_units: int, dim: int | None = None) -> torch.Tensor:
        """``tensor`` with each unit's elements contiguous along ``dim`` (default the member's; 0 for a
        per-slice statistic of the member) in unit-major order; unchanged when plain."""
        if not self.parts:
            return tensor
        return tensor.index_select(self.dim if dim is None else dim, self.unit_order(num_units).to(tensor.device))


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
            total += tensor.numel() // tensor.shape[member.dim] * member.unit_size
        return total

    def element_indices(self, member: Member, units: torch.Tensor) -> torch.Tensor:
        """Indices along ``member.dim`` of the elements owned by ``units`` (sorted unit ids)."""
        return member.element_indices(units)


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
