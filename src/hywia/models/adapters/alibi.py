"""ALiBi with pruned heads: every surviving head keeps its ORIGINAL slope.

ALiBi models (Bloom, Baichuan-13B) compute one position bias per head from the head count alone
(``slope_h = 2^(-8 (h + 1) / n)`` and its interleaved extension), once for the whole model, and hand it
to every layer. Removing heads and lowering the head count would silently give the survivors other
slopes. hywia therefore leaves the model's head count (``n_head`` / ``num_attention_heads``) at its
original value, so that the model keeps building the original bias for all original heads, and each
pruned attention module selects the rows of the heads it kept:

* the original ids of a layer's surviving heads live in a (non-persistent) buffer
  ``hywia_alibi_heads`` of its attention module, composed at every removal (``keep_heads``);
* a forward pre-hook on the attention module replaces the bias argument (Bloom's ``alibi``,
  Baichuan's ``attention_mask``) by those heads' rows (``install``);
* the config records them per layer under ``hywia_alibi_heads`` (with the per-layer widths, so the
  output always reloads through ``hywia.load_pruned``, which re-installs the hooks). A stock
  ``from_pretrained`` cannot rebuild such a model: its layers would be full width, and transformers
  would recompute slopes for a smaller head count.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from ...errors import HywiaError

HEADS_KEY = "hywia_alibi_heads"
BUFFER = "hywia_alibi_heads"
TOTAL = "hywia_alibi_total_heads"
_HOOK = "_hywia_alibi_hook"


def select_flat_heads(bias: torch.Tensor, heads: torch.Tensor, total: int) -> torch.Tensor:
    """Bloom's ``alibi``: ``[batch * total, 1, keys]`` (batch-major) -> ``[batch * kept, 1, keys]``."""
    return bias.unflatten(0, (-1, total)).index_select(1, heads).flatten(0, 1)


def select_head_axis(bias: torch.Tensor, heads: torch.Tensor, total: int) -> torch.Tensor:
    """Baichuan's ALiBi mask: ``[total, q, k]`` or ``[batch, total, q, k]`` -> the kept heads' rows."""
    axis = bias.dim() - 3
    if bias.shape[axis] != total:  # a head-independent mask (e.g. [batch, 1, q, k]): nothing to select
        return bias
    return bias.index_select(axis, heads)


def _select_hook(module: nn.Module, args: tuple, kwargs: dict, *, argument: str, select: Callable) -> tuple:
    heads = getattr(module, BUFFER, None)
    if heads is None:
        return None
    if argument not in kwargs:
        raise HywiaError(f"{type(module).__name__} was called without {argument!r} as a keyword argument; "
                         "hywia cannot select the pruned heads' ALiBi slopes")
    bias = kwargs[argument]
    if bias is not None:
        kwargs = {**kwargs, argument: select(bias, heads.to(bias.device), getattr(module, TOTAL))}
    return args, kwargs


def current_heads(attn: nn.Module, count: int) -> torch.Tensor:
    """Original ids of the heads ``attn`` holds now (all of them, in order, before any removal)."""
    heads = getattr(attn, BUFFER, None)
    return heads.clone() if heads is not None else torch.arange(count)


def install(attn: nn.Module, heads: torch.Tensor, total: int, argument: str, select: Callable) -> None:
    """Make ``attn`` use the original ALiBi rows ``heads`` (of ``total``) from its ``argument``."""
    heads = torch.as_tensor(heads, dtype=torch.long)
    device = next(attn.parameters()).device
    if device.type == "meta":  # a model being rebuilt (load_pruned): its weights arrive later, ids are known now
        device = torch.device("cpu")
    if BUFFER in attn._buffers:
        attn._buffers[BUFFER] = heads.to(device)
    else:
        attn.register_buffer(BUFFER, heads.to(device), persistent=False)
    setattr(attn, TOTAL, int(total))
    if getattr(attn, _HOOK, None) is None:
        hook = partial(_select_hook, argument=argument, select=select)
        setattr(attn, _HOOK, attn.register_forward_pre_hook(hook, with_kwargs=True))


def keep_heads(attn: nn.Module, kept: torch.Tensor, count_before: int, total: int, argument: str,
               select: Callable) -> None:
    """After heads ``kept`` (ids among the ``count_before`` heads ``attn`` had) were kept: compose the map."""
    heads = current_heads(attn, count_before)[torch.sort(kept.to(torch.long).cpu()).values]
    install(attn, heads, total, argument, select)


def record(attns: list[nn.Module], total: int) -> list[list[int]] | None:
    """Per-layer original head ids for the config; None when no layer lost a head."""
    maps = [current_heads(attn, total).tolist() for attn in attns]
    return None if all(m == list(range(total)) for m in maps) else maps


def restore(attns: list[nn.Module], recorded, total: int, argument: str, select: Callable) -> None:
    """Re-install the recorded maps on a model rebuilt from its config and shrunk to its widths."""
    if recorded is None:
        return
    if len(recorded) != len(attns):
        raise HywiaError(f"{HEADS_KEY} lists {len(recorded)} layers; the model has {len(attns)}")
    for attn, heads in zip(attns, recorded):
        if any(not 0 <= h < total for h in heads) or len(set(heads)) != len(heads):
            raise HywiaError(f"{HEADS_KEY} holds head ids outside 0..{total - 1} or repeated ones")
        install(attn, torch.tensor(heads, dtype=torch.long), total, argument, select)
