"""Bloom (transformers' BloomForCausalLM): fused per-head q/k/v, biases everywhere, ALiBi, MHA.

Layout: ``transformer.h[i].self_attention.query_key_value`` ``[num_heads * 3 * head_dim, hidden]`` whose
rows are ``[num_heads, 3, head_dim]`` (a head's q, k and v rows are one contiguous block of
``3 * head_dim``), ``self_attention.dense`` (the output projection, one ``head_dim`` block of input
columns per head), ``mlp.dense_h_to_4h`` / ``mlp.dense_4h_to_h`` (GELU, no gate, width ``4 * hidden``
fixed by the architecture). Every linear layer has a bias; ``word_embeddings_layernorm`` and the layer
norms act on the hidden size and are never sliced.

Widths are not config fields (the MLP is always ``4 * hidden``) and the ALiBi slopes depend on the head
count (see ``alibi``), so ``n_head`` keeps its original value and a pruned Bloom records its per-layer
widths and surviving heads: reload it with ``hywia.load_pruned``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..groups import ATTN, MLP, GroupSet, Member
from . import alibi
from .base import LayerWidths, ModelAdapter
from .llama import LAYER_WIDTHS_KEY

ALIBI_ARGUMENT = "alibi"
LORA_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


class BloomAdapter(ModelAdapter):
    model_types = ("bloom",)
    families = ("Bloom",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        blocks = getattr(getattr(model, "transformer", None), "h", None)
        if blocks is None or len(blocks) == 0:
            return False
        attn, mlp = getattr(blocks[0], "self_attention", None), getattr(blocks[0], "mlp", None)
        return (isinstance(getattr(attn, "query_key_value", None), nn.Linear)
                and isinstance(getattr(attn, "dense", None), nn.Linear)
                and isinstance(getattr(mlp, "dense_h_to_4h", None), nn.Linear)
                and isinstance(getattr(mlp, "dense_4h_to_h", None), nn.Linear))

    @property
    def num_layers(self) -> int:
        return len(self.model.transformer.h)

    @property
    def total_heads(self) -> int:
        """The head count the model builds its ALiBi bias for: the original one, never changed."""
        return int(self.config.n_head)

    @property
    def head_dim(self) -> int:
        return self.config.hidden_size // self.total_heads

    def layer_prefix(self, layer: int) -> str:
        return f"transformer.h.{layer}"

    def _attn(self, layer: int) -> nn.Module:
        return self.model.transformer.h[layer].self_attention

    def _mlp(self, layer: int) -> nn.Module:
        return self.model.transformer.h[layer].mlp

    def widths(self, layer: int) -> LayerWidths:
        heads = self._attn(layer).query_key_value.out_features // (3 * self.head_dim)
        return LayerWidths(heads, heads, self._mlp(layer).dense_h_to_4h.out_features)

    def group_sets(self, layer: int) -> list[GroupSet]:
        widths = self.widths(layer)
        prefix = self.layer_prefix(layer)
        qkv, dense = f"{prefix}.self_attention.query_key_value", f"{prefix}.self_attention.dense"
        attn_members = [Member(qkv, "weight", 0, 3 * self.head_dim), Member(qkv, "bias", 0, 3 * self.head_dim),
                        Member(dense, "weight", 1, self.head_dim)]
        up, down = f"{prefix}.mlp.dense_h_to_4h", f"{prefix}.mlp.dense_4h_to_h"
        mlp_members = [Member(up, "weight", 0, 1), Member(up, "bias", 0, 1), Member(down, "weight", 1, 1)]
        return [GroupSet(layer, ATTN, widths.num_heads, attn_members),
                GroupSet(layer, MLP, widths.intermediate_size, mlp_members)]

    def unit_output_module(self, layer: int, kind: str) -> str:
        prefix = self.layer_prefix(layer)
        return f"{prefix}.self_attention.dense" if kind == ATTN else f"{prefix}.mlp.dense_4h_to_h"

    def lora_targets(self) -> list[str]:
        return list(LORA_TARGETS)

    def add_output_biases(self, kinds: set[str]) -> None:
        """Nothing to add: Bloom's ``dense`` and ``dense_4h_to_h`` always have a bias."""

    def units_kept(self, layer: int, kind: str, kept: torch.Tensor, before: LayerWidths) -> None:
        if kind == ATTN:
            alibi.keep_heads(self._attn(layer), kept, before.num_heads, self.total_heads, ALIBI_ARGUMENT,
                             alibi.select_flat_heads)

    def restore_unit_state(self) -> None:
        attns = [self._attn(i) for i in range(self.num_layers)]
        alibi.restore(attns, getattr(self.config, alibi.HEADS_KEY, None), self.total_heads, ALIBI_ARGUMENT,
                      alibi.select_flat_heads)

    def after_resize(self, layer: int, widths: LayerWidths) -> None:
        attn = self._attn(layer)
        attn.num_heads = widths.num_heads
        attn.hidden_size = attn.split_size = widths.num_heads * self.head_dim  # read by the tensor-parallel path
        self.model.transformer.h[layer].num_heads = widths.num_heads

    def write_config(self, layer_widths: list[LayerWidths]) -> bool:
        cfg = self.config
        heads = alibi.record([self._attn(i) for i in range(self.num_layers)], self.total_heads)
        full = LayerWidths(self.total_heads, self.total_heads, 4 * cfg.hidden_size)
        for key in (LAYER_WIDTHS_KEY, alibi.HEADS_KEY):
            if hasattr(cfg, key):
                delattr(cfg, key)
        if heads is None and all(w == full for w in layer_widths):
            return True
        setattr(cfg, LAYER_WIDTHS_KEY, [w.to_dict() for w in layer_widths])
        if heads is not None:
            setattr(cfg, alibi.HEADS_KEY, heads)
        return False
