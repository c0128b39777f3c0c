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


def _remove_units(model: nn.Module, adapter: ModelAdapter, keep: dict[tuple[int, str], torch.Tensor],
                  track: bool) -> list[LayerWidths]:
    """Slice every layer to ``keep`` and write the new widths into its modules; with ``track`` the adapter
    also moves per-unit state (``units_kept``) along with the kept units."""
    for layer in range(adapter.num_layers):
        before = adapter.widths(layer)
        for group_set in adapter.group_sets(layer):
            if group_set.key in keep:
                kept = torch.sort(keep[group_set.key].to(torch.long).cpu()).values
                keep_units(model, group_set, kept)
                if track:
                    adapter.units_kept(layer, group_set.kind, kept, before)
        kept_kv = len(keep[(layer, ATTN)]) if (layer, ATTN) in keep else before.num_kv_heads
        heads_per_kv = before.num_heads // before.num_kv_heads
        after = LayerWidths(kept_kv * heads_per_kv, kept_kv, adapter.widths(layer).intermediate_size)
        adapter.after_resize(layer, after)
    return adapter.all_widths()


def apply_keep(model: nn.Module, adapter: ModelAdapter, keep: dict[tuple[int, str], torch.Tensor]) -> list[LayerWidths]:
    """Remove every unit not listed in ``keep`` (keyed by (layer, kind)); return the new widths.

    Group sets missing from ``keep`` are left whole. The config is rewritten to the new widths (see
    ``ModelAdapter.write_config``).
    """
    widths = _remove_units(model, adapter, keep, track=True)
    adapter.write_config(widths)
    return widths


def resize_to_widths(model: nn.Module, adapter: ModelAdapter, widths: list[LayerWidths]) -> None:
    """Shrink a freshly built (e.g. meta or random) model to per-layer ``widths`` before loading weights.

    The config already describes the result (it is the saved one): it is not rewritten, and what it
    records beyond widths (ALiBi head ids) is re-installed (``ModelAdapter.restore_unit_state``).
    """
    keep: dict[tuple[int, str], torch.Tensor] = {}
    for layer, target in enumerate(widths):
        for group_set in adapter.group_sets(layer):
            count = target.num_kv_heads if group_set.kind == ATTN else target.intermediate_size
            keep[group_set.key] = torch.arange(count)
    _remove_units(model, adapter, keep, track=False)
    adapter.restore_unit_state()
