"""Physical removal: slice the coupled weights of the removed units, then fix attributes and config."""

from __future__ import annotations

import torch
from torch import nn

from .adapters import LayerWidths, ModelAdapter
from .groups import ATTN, GroupSet


def _set_linear_tensor(module: nn.Module, param: str, value: torch.Tensor) -> None:
    old = getattr(module, param)
    setattr(module, param, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    if isinstance(module, nn.Linear) and param == "weight":
        module.out_features, module.in_features = value.shape


def keep_units(model: nn.Module, group_set: GroupSet, keep: torch.Tensor) -> None:
    """Keep only units ``keep`` (any order; they are sorted) of ``group_set`` in every coupled tensor."""
    keep = torch.sort(keep.to(torch.long).cpu()).values
    for member in group_set.members:
        module = model.get_submodule(member.module)
        tensor = getattr(module, member.param)
        index = group_set.element_indices(member, keep).to(tensor.device)
        with torch.no_grad():
            _set_linear_tensor(module, member.param, tensor.index_select(member.dim, index))


def apply_keep(model: nn.Module, adapter: ModelAdapter, keep: dict[tuple[int, str], torch.Tensor]) -> list[LayerWidths]:
    """Remove every unit not listed in ``keep`` (keyed by (layer, kind)); return the new widths.

    Group sets missing from ``keep`` are left whole. The config is rewritten to the new widths (see
    ``ModelAdapter.write_config``).
    """
    for layer in range(adapter.num_layers):
        before = adapter.widths(layer)
        for group_set in adapter.group_sets(layer):
            if group_set.key in keep:
                keep_units(model, group_set, keep[group_set.key])
        kept_kv = len(keep[(layer, ATTN)]) if (layer, ATTN) in keep else before.num_kv_heads
        heads_per_kv = before.num_heads // before.num_kv_heads
        after = LayerWidths(kept_kv * heads_per_kv, kept_kv, adapter.widths(layer).intermediate_size)
        adapter.after_resize(layer, after)
    widths = adapter.all_widths()
    adapter.write_config(widths)
    return widths


def resize_to_widths(model: nn.Module, adapter: ModelAdapter, widths: list[LayerWidths]) -> None:
    """Shrink a freshly built (e.g. meta or random) model to per-layer ``widths`` before loading weights."""
    keep: dict[tuple[int, str], torch.Tensor] = {}
    for layer, target in enumerate(widths):
        for group_set in adapter.group_sets(layer):
            count = target.num_kv_heads if group_set.kind == ATTN else target.intermediate_size
            keep[group_set.key] = torch.arange(count)
    apply_keep(model, adapter, keep)
