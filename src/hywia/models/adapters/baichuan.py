"""Baichuan (remote code: ``--trust-remote-code``): Baichuan-7B / Baichuan2-7B (RoPE) and
Baichuan-13B / Baichuan2-13B (ALiBi).

Layout: ``model.layers[i].self_attn.W_pack`` ``[3 * hidden, hidden]`` holding all query rows, then all
key rows, then all value rows (the attention splits it with ``unflatten(-1, (3, self.hidden_size))``);
``self_attn.o_proj``; a Llama MLP ``mlp.{gate,up,down}_proj``. MHA: a unit is one head, owning
``head_dim`` rows of each of W_pack's three parts (a fused member) and ``head_dim`` input columns of
o_proj. No biases.

The attention reads its own ``num_heads`` and ``hidden_size`` (= ``num_heads * head_dim``), which
``after_resize`` sets. Its ``head_dim`` is ``hidden_size // num_attention_heads`` of the config and the
13B models build their ALiBi mask ``[n_head, L, L]`` from ``num_attention_heads``, so that field keeps
its original value whenever heads are removed: the per-layer widths (and, with ALiBi, the original ids
of the surviving heads, see ``alibi``) are recorded and the output reloads with ``hywia.load_pruned``
(``trust_remote_code=True``). Only a uniform MLP-only pruning gives a stock config.

Recognised from ``config.model_type == "baichuan"`` or a Baichuan class in ``config.architectures``,
with the layout above; ALiBi when the attention has no rotary embedding (the 13B layout).
"""

from __future__ import annotations

import torch
from torch import nn

from ..groups import ATTN, MLP, GroupSet, Member
from . import alibi
from .base import LayerWidths
from .llama import LAYER_WIDTHS_KEY, MLP_PROJ, LlamaAdapter

ALIBI_ARGUMENT = "attention_mask"


def is_baichuan_config(config) -> bool:
    names = [str(name).lower() for name in (getattr(config, "architectures", None) or [])]
    return getattr(config, "model_type", None) == "baichuan" or any(name.startswith("baichuan") for name in names)


class BaichuanAdapter(LlamaAdapter):
    model_types = ("baichuan",)
    families = ("Baichuan-7B", "Baichuan-13B")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        layers = getattr(getattr(model, "model", None), "layers", None)
        if not is_baichuan_config(getattr(model, "config", None)) or layers is None or len(layers) == 0:
            return False
        attn, mlp = getattr(layers[0], "self_attn", None), getattr(layers[0], "mlp", None)
        return (all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("W_pack", "o_proj"))
                and all(isinstance(getattr(mlp, n, None), nn.Linear) for n in MLP_PROJ))

    def __init__(self, model: nn.Module):
        self._head_dim_value = model.model.layers[0].self_attn.head_dim
        super().__init__(model)
        self._head_dim = self._head_dim_value

    @property
    def needs_bos(self) -> bool:
        return False

    @property
    def uses_alibi(self) -> bool:
        return getattr(self._attn(0), "rotary_emb", None) is None

    @property
    def head_dim(self) -> int:
        return self._head_dim_value

    @property
    def total_heads(self) -> int:
        return int(self.config.num_attention_heads)

    def widths(self, layer: int) -> LayerWidths:
        heads = self._attn(layer).o_proj.in_features // self.head_dim
        return LayerWidths(heads, heads, self._mlp(layer).up_proj.out_features)

    def group_sets(self, layer: int) -> list[GroupSet]:
        widths = self.widths(layer)
        prefix = self.layer_prefix(layer)
        hd, width = self.head_dim, widths.num_heads * self.head_dim
        w_pack_parts = [(0, hd), (width, hd), (2 * width, hd)]  # query, key, value rows
        attn_members = [Member.fused(f"{prefix}.self_attn.W_pack", "weight", 0, w_pack_parts),
                        Member(f"{prefix}.self_attn.o_proj", "weight", 1, hd)]
        mlp_members = [Member(f"{prefix}.mlp.{name}", "weight", 0, 1) for name in ("gate_proj", "up_proj")]
        mlp_members.append(Member(f"{prefix}.mlp.down_proj", "weight", 1, 1))
        return [GroupSet(layer, ATTN, widths.num_heads, attn_members),
                GroupSet(layer, MLP, widths.intermediate_size, mlp_members)]

    def lora_targets(self) -> list[str]:
        return ["W_pack", "o_proj", *MLP_PROJ]

    def units_kept(self, layer: int, kind: str, kept: torch.Tensor, before: LayerWidths) -> None:
        if kind == ATTN and self.uses_alibi:
            alibi.keep_heads(self._attn(layer), kept, before.num_heads, self.total_heads, ALIBI_ARGUMENT,
                             alibi.select_head_axis)

    def restore_unit_state(self) -> None:
        if self.uses_alibi:
            attns = [self._attn(i) for i in range(self.num_layers)]
            alibi.restore(attns, getattr(self.config, alibi.HEADS_KEY, None), self.total_heads, ALIBI_ARGUMENT,
                          alibi.select_head_axis)

    def after_resize(self, layer: int, widths: LayerWidths) -> None:
        attn = self._attn(layer)
        attn.num_heads = widths.num_heads
        attn.hidden_size = widths.num_heads * self.head_dim

    def write_config(self, layer_widths: list[LayerWidths]) -> bool:
        cfg = self.config
        attns = [self._attn(i) for i in range(self.num_layers)]
        heads = alibi.record(attns, self.total_heads) if self.uses_alibi else None
        for key in (LAYER_WIDTHS_KEY, alibi.HEADS_KEY):
            if hasattr(cfg, key):
                delattr(cfg, key)
        all_heads = all(w.num_heads == self.total_heads for w in layer_widths)
        if all_heads and len({w.intermediate_size for w in layer_widths}) == 1:
            cfg.intermediate_size = layer_widths[0].intermediate_size
            return True
        setattr(cfg, LAYER_WIDTHS_KEY, [w.to_dict() for w in layer_widths])
        if heads is not None:
            setattr(cfg, alibi.HEADS_KEY, heads)
        return False
