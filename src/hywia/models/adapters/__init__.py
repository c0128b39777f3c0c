"""Adapter registry: pick the adapter that understands a model, or fail naming the supported ones."""

from __future__ import annotations

from torch import nn

from ...errors import HywiaError
from .base import LayerWidths, ModelAdapter
from .llama import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, LlamaAdapter

ADAPTERS: list[type[ModelAdapter]] = [LlamaAdapter]


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Return the adapter for ``model``; raise a one-line error for unsupported architectures."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter(model)
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    raise HywiaError(
        f"unsupported architecture {name} (model_type={model_type!r}); hywia supports "
        f"{', '.join(supported_model_types())} and models with the same layer layout"
    )


__all__ = ["ADAPTERS", "LAYER_WIDTHS_KEY", "OUTPUT_BIAS_KEY", "LayerWidths", "ModelAdapter", "get_adapter", "supported_model_types"]
