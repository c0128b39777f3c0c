"""Phi-3 (transformers' Phi3ForCausalLM): fused q/k/v and fused gate/up, GQA.

Layout: ``model.layers[i].self_attn.qkv_proj`` ``[(n_heads + 2 n_kv) * head_dim, hidden]`` holding all
query rows, then all key rows, then all value rows; ``self_attn.o_proj``; ``mlp.gate_up_proj``
``[2 * intermediate, hidden]`` (gate rows, then up rows; ``up * act(gate)``) and ``mlp.down_proj``.
A KV group owns ``r * head_dim`` rows of the query part and ``head_dim`` rows of the key and the value
parts (query head ``i`` reads KV head ``i // r``); an MLP channel owns one gate and one up row. Both
are fused members (``groups.Member.fused``).

Phi-3's attention splits ``qkv_proj``'s output with ``config.num_attention_heads`` at every call, and all
layers share one config; each pruned layer therefore reads its own head count through a
``LayerConfig`` view of the shared config.
"""

from __future__ import annotations

from torch import nn

from ..groups import ATTN, MLP, GroupSet, Member
from .base import LayerWidths
from .llama import LlamaAdapter

LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class LayerConfig:
    """The model config as one layer reads it: its own values for ``own``, every other attribute (read
    or written) the shared config's."""

    def __init__(self, shared, **own):
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_own", dict(own))

    def __getattr__(self, name):
        own = self.__dict__.get("_own")
        if own is None or name.startswith("__"):  # copy / pickle probing a half-built object
            raise AttributeError(name)
        return own[name] if name in own else getattr(self.__dict__["_shared"], name)

    def __setattr__(self, name, value):
        if name in self._own:
            self._own[name] = value
        else:
            setattr(self._shared, name, value)


class Phi3Adapter(LlamaAdapter):
    model_types = ("phi3",)
    families = ("Phi-3",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None or len(layers) == 0:
            return False
        attn, mlp = getattr(layers[0], "self_attn", None), getattr(layers[0], "mlp", None)
        return all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("qkv_proj", "o_proj")) and all(
            isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_up_proj", "down_proj"))

    def widths(self, layer: int) -> LayerWidths:
        attn, mlp = self._attn(layer), self._mlp(layer)
        heads = attn.o_proj.in_features // self.head_dim
        kv_heads = (attn.qkv_proj.out_features // self.head_dim - heads) // 2
        return LayerWidths(heads, kv_heads, mlp.down_proj.in_features)

    def group_sets(self, layer: int) -> list[GroupSet]:
        widths = self.widths(layer)
        prefix = self.layer_prefix(layer)
        attn, mlp = self._attn(layer), self._mlp(layer)
        hd, r = self.head_dim, widths.num_heads // widths.num_kv_heads
        q_end, k_end = widths.num_heads * hd, (widths.num_heads + widths.num_kv_heads) * hd
        qkv_parts = [(0, r * hd), (q_end, hd), (k_end, hd)]
        attn_members = [Member.fused(f"{prefix}.self_attn.qkv_proj", "weight", 0, qkv_parts)]
        if attn.qkv_proj.bias is not None:
            attn_members.append(Member.fused(f"{prefix}.self_attn.qkv_proj", "bias", 0, qkv_parts))
        attn_members.append(Member(f"{prefix}.self_attn.o_proj", "weight", 1, r * hd))

        gate_up_parts = [(0, 1), (widths.intermediate_size, 1)]
        mlp_members = [Member.fused(f"{prefix}.mlp.gate_up_proj", "weight", 0, gate_up_parts)]
        if mlp.gate_up_proj.bias is not None:
            mlp_members.append(Member.fused(f"{prefix}.mlp.gate_up_proj", "bias", 0, gate_up_parts))
        mlp_members.append(Member(f"{prefix}.mlp.down_proj", "weight", 1, 1))
        return [GroupSet(layer, ATTN, widths.num_kv_heads, attn_members),
                GroupSet(layer, MLP, widths.intermediate_size, mlp_members)]

    def lora_targets(self) -> list[str]:
        return list(LORA_TARGETS)

    def after_resize(self, layer: int, widths: LayerWidths) -> None:
        attn = self._attn(layer)
        attn.num_key_value_groups = widths.num_heads // widths.num_kv_heads
        attn.num_key_value_heads = widths.num_kv_heads
        shared = attn.config._shared if isinstance(attn.config, LayerConfig) else attn.config
        attn.config = LayerConfig(shared, num_attention_heads=widths.num_heads)
