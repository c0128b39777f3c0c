"""Tiny models for the forward-only method tests: conftest's, with an MHA Llama whose hidden size
divides every pruned head count (transformers 5 validates hidden % heads when a config loads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from conftest import COMMON, VOCAB, build_from_config, tiny_tokenizer  # noqa: F401  (re-exported)
from conftest import tiny_config as _conftest_config

KINDS = ("llama-mha", "llama-gqa", "qwen2", "mistral", "qwen3", "gemma", "gemma2", "gemma3")


def tiny_config(kind: str):
    if kind == "llama-mha":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **{**COMMON, "hidden_size": 48, "head_dim": 12})
    return _conftest_config(kind)


def build_tiny(kind: str, seed: int = 0, attn: str = "eager"):
    return build_from_config(tiny_config(kind), seed, attn)


def token_ids(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def zero_removed(model, adapter, keep):
    """Dense reference: zero the o_proj / down_proj input columns of every removed unit."""
    with torch.no_grad():
        for (layer, kind), kept in keep.items():
            group_set = next(gs for gs in adapter.group_sets(layer) if gs.kind == kind)
            removed = torch.tensor(sorted(set(range(group_set.num_units)) - set(kept.tolist())), dtype=torch.long)
            if len(removed) == 0:
                continue
            out = model.get_submodule(adapter.unit_output_module(layer, kind))
            unit_cols = out.in_features // group_set.num_units
            cols = (removed[:, None] * unit_cols + torch.arange(unit_cols)).reshape(-1)
            out.weight[:, cols] = 0
