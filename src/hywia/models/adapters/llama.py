"""The Llama family: Llama 1/2/3, Vicuna, Mistral, Qwen2/3, Gemma 1/2/3 and any model with the same layout.

Layout: ``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``model.layers[i].mlp.{gate,up,down}_proj``,
GQA with query head ``i`` reading KV head ``i // r``. Optional biases on q/k/v (Qwen2), on o_proj and
on the MLP (``attention_bias`` / ``mlp_bias``) are sliced with their weights. Per-head norms (Qwen3's and
Gemma 3's ``q_norm``/``k_norm``) act on ``head_dim`` and need no slicing; Gemma's explicit ``head_dim``,
embedding scale, soft-capping and extra layer norms do not depend on how many heads or channels remain.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import HywiaError
from ..groups import ATTN, MLP, GroupSet, Member
from .base import LayerWidths, ModelAdapter

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
LAYER_WIDTHS_KEY = "hywia_layer_widths"
OUTPUT_BIAS_KEY = "hywia_output_biases"
# Config flags that give o_proj / down_proj a bias, with every projection they switch on, per model_type.
# Kinds without a flag fall back to OUTPUT_BIAS_KEY, which only hywia.load_pruned understands.
CONFIG_BIAS_FLAGS = {
    "llama": {ATTN: ("attention_bias", ATTN_PROJ), MLP: ("mlp_bias", MLP_PROJ)},
    "qwen3": {ATTN: ("attention_bias", ATTN_PROJ)},
}


def ensure_bias(linear: nn.Linear) -> None:
    """Add a zero bias to ``linear`` if it has none (same dtype and device as its weight)."""
    if linear.bias is None:
        weight = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device),
                                   requires_grad=weight.requires_grad)


class LlamaAdapter(ModelAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    families = ("Llama 1/2/3", "Vicuna", "Mistral", "Qwen2", "Qwen3", "Gemma 1/2/3")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None or len(layers) == 0:
            return False
        layer = layers[0]
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        return (
            attn is not None
            and mlp is not None
            and all(isinstance(getattr(attn, n, None), nn.Linear) for n in ATTN_PROJ)
            and all(isinstance(getattr(mlp, n, None), nn.Linear) for n in MLP_PROJ)
        )

    @property
    def needs_bos(self) -> bool:
        return str(getattr(self.config, "model_type", "")).startswith("gemma")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = self.config
        self._head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for layer in range(self.num_layers):
            widths = self.widths(layer)
            if widths.num_kv_heads == 0 or widths.num_heads % widths.num_kv_heads:
                raise HywiaError(
                    f"layer {layer}: {widths.num_heads} query heads cannot be split evenly over "
                    f"{widths.num_kv_heads} KV heads; hywia needs n_heads to be a multiple of n_kv_heads"
                )

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    @property
    def head_dim(self) -> int:
        return self._head_dim

    def layer_prefix(self, layer: int) -> str:
        return f"model.layers.{layer}"

    def _attn(self, layer: int) -> nn.Module:
        return self.model.model.layers[layer].self_attn

    def _mlp(self, layer: int) -> nn.Module:
        return self.model.model.layers[layer].mlp

    def widths(self, layer: int) -> LayerWidths:
        attn, mlp = self._attn(layer), self._mlp(layer)
        return LayerWidths(
            num_heads=attn.q_proj.out_features // self.head_dim,
            num_kv_heads=attn.k_proj.out_features // self.head_dim,
            intermediate_size=mlp.up_proj.out_features,
        )

    def group_sets(self, layer: int) -> list[GroupSet]:
        widths = self.widths(layer)
        prefix = self.layer_prefix(layer)
        attn, mlp = self._attn(layer), self._mlp(layer)
        q_rows = widths.num_heads // widths.num_kv_heads * self.head_dim
        kv_rows = self.head_dim

        attn_members = []
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            attn_members.append(Member(f"{prefix}.self_attn.{name}", "weight", 0, rows))
            if getattr(attn, name).bias is not None:
                attn_members.append(Member(f"{prefix}.self_attn.{name}", "bias", 0, rows))
        attn_members.append(Member(f"{prefix}.self_attn.o_proj", "weight", 1, q_rows))

        mlp_members = [
            Member(f"{prefix}.mlp.gate_proj", "weight", 0, 1),
            Member(f"{prefix}.mlp.up_proj", "weight", 0, 1),
            Member(f"{prefix}.mlp.down_proj", "weight", 1, 1),
        ]
        for name in ("gate_proj", "up_proj"):
            if getattr(mlp, name).bias is not None:
                mlp_members.append(Member(f"{prefix}.mlp.{name}", "bias", 0, 1))
        return [
            GroupSet(layer, ATTN, widths.num_kv_heads, attn_members),
            GroupSet(layer, MLP, widths.intermediate_size, mlp_members),
        ]

    def lora_targets(self) -> list[str]:
        return list(ATTN_PROJ + MLP_PROJ)

    def unit_output_module(self, layer: int, kind: str) -> str:
        prefix = self.layer_prefix(layer)
        return f"{prefix}.self_attn.o_proj" if kind == ATTN else f"{prefix}.mlp.down_proj"

    def _projections(self, layer: int, kind: str, names: tuple[str, ...]) -> list[nn.Linear]:
        parent = self._attn(layer) if kind == ATTN else self._mlp(layer)
        return [getattr(parent, name) for name in names]

    def add_output_biases(self, kinds: set[str]) -> None:
        """Llama / Qwen3: switch on the config flag (``attention_bias`` -> q/k/v/o, ``mlp_bias`` ->
        gate/up/down) and give every projection it covers a zero bias, so that plain
        ``from_pretrained`` reloads them. Otherwise (Mistral, Qwen2 ...) only o_proj / down_proj get
        one, recorded under ``hywia_output_biases`` for ``hywia.load_pruned``."""
        cfg = self.config
        recorded = set(getattr(cfg, OUTPUT_BIAS_KEY, None) or [])
        for kind in sorted(kinds):
            flag = CONFIG_BIAS_FLAGS.get(getattr(cfg, "model_type", None), {}).get(kind)
            names = flag[1] if flag else (ATTN_PROJ[-1] if kind == ATTN else MLP_PROJ[-1],)
            for layer in range(self.num_layers):
                for linear in self._projections(layer, kind, names):
                    ensure_bias(linear)
            if flag:
                setattr(cfg, flag[0], True)
            else:
                recorded.add(kind)
        if recorded:
            setattr(cfg, OUTPUT_BIAS_KEY, sorted(recorded))

    def restore_output_biases(self) -> None:
        for kind in getattr(self.config, OUTPUT_BIAS_KEY, None) or []:
            if kind not in (ATTN, MLP):
                raise HywiaError(f"{OUTPUT_BIAS_KEY} lists {kind!r}; expected {ATTN!r} or {MLP!r}")
            name = ATTN_PROJ[-1] if kind == ATTN else MLP_PROJ[-1]
            for layer in range(self.num_layers):
                ensure_bias(self._projections(layer, kind, (name,))[0])

    def after_resize(self, layer: int, widths: LayerWidths) -> None:
        attn = self._attn(layer)
        attn.num_key_value_groups = widths.num_heads // widths.num_kv_heads
        for attr, value in (("num_heads", widths.num_heads), ("num_key_value_heads", widths.num_kv_heads)):
            if hasattr(attn, attr):
                setattr(attn, attr, value)

    def write_config(self, layer_widths: list[LayerWidths]) -> bool:
        cfg = self.config
        cfg.head_dim = self.head_dim
        if len(set(layer_widths)) == 1:
            only = layer_widths[0]
            stock = {"num_attention_heads": only.num_heads, "num_key_value_heads": only.num_kv_heads,
                     "intermediate_size": only.intermediate_size}
            if _stock_config_valid(cfg, stock):
                for name, value in stock.items():
                    setattr(cfg, name, value)
                if hasattr(cfg, LAYER_WIDTHS_KEY):
                    delattr(cfg, LAYER_WIDTHS_KEY)
                return True
        # The stock fields keep their pre-pruning values: valid for transformers, and at least as wide
        # as every layer, so building the model and shrinking each layer (hywia.load_pruned) works.
        setattr(cfg, LAYER_WIDTHS_KEY, [w.to_dict() for w in layer_widths])
        return False


def _stock_config_valid(config, overrides: dict) -> bool:
    """Would transformers accept (and rebuild) this config with ``overrides``? Some versions validate
    e.g. ``hidden_size % num_attention_heads == 0``, which a pruned head count can break."""
    try:
        type(config).from_dict({**config.to_dict(), **overrides})
    except Exception:  # transformers raises its own validation error types, which vary by version
        return False
    return True
