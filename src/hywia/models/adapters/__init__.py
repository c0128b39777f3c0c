"""Adapter registry: pick the adapter that understands a model, or fail naming the supported ones."""

from __future__ import annotations

from torch import nn

from ...errors import HywiaError
from .baichuan import BaichuanAdapter
from .base import LayerWidths, ModelAdapter
from .bloom import BloomAdapter
from .llama import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, LlamaAdapter
from .phi3 import Phi3Adapter

ADAPTERS: list[type[ModelAdapter]] = [LlamaAdapter, Phi3Adapter, BloomAdapter, BaichuanAdapter]
#: model_types whose modelling code is not in transformers (the model folder's own Python code)
REMOTE_CODE_MODEL_TYPES = ("baichuan",)


def supported_model_types() -> list[str]:
    return [t for adapter in ADAPTERS for t in adapter.model_types]


def supported_families() -> list[str]:
    """Human names of the supported model families, e.g. for ``--help`` and error messages."""
    return [family for adapter in ADAPTERS for family in adapter.families]


def supported_text() -> str:
    return (f"{', '.join(supported_families())} (model_type {', '.join(supported_model_types())}) and models with "
            f"the same layer layout")


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Return the adapter for ``model``; raise a one-line error for unsupported architectures."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter(model)
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    raise HywiaError(f"unsupported architecture {name} (model_type={model_type!r}); hywia supports {supported_text()}")


__all__ = ["ADAPTERS", "LAYER_WIDTHS_KEY", "OUTPUT_BIAS_KEY", "REMOTE_CODE_MODEL_TYPES", "LayerWidths", "ModelAdapter",
           "get_adapter", "supported_families", "supported_model_types", "supported_text"]
