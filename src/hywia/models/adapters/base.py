"""Architecture knowledge lives here and nowhere else.

An adapter tells the algorithms where a model keeps its decoder layers, which linear layers form a
head / KV group / MLP channel, how wide each layer is, and how to write new widths back into the
module attributes and the config. Algorithms only talk to adapters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..groups import GroupSet


@dataclass(frozen=True)
class LayerWidths:
    """The prunable widths of one decoder layer."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerWidths":
        return cls(int(data["num_heads"]), int(data["num_kv_heads"]), int(data["intermediate_size"]))


class ModelAdapter(ABC):
    """Describes one causal-LM architecture to the pruning algorithms."""

    #: transformers ``model_type`` values this adapter was written and tested for
    model_types: tuple[str, ...] = ()
    #: the model families it covers, as the help and the error messages name them
    families: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    def needs_bos(self) -> bool:
        """Does every sequence have to start with the BOS token? (Gemma: without it perplexity is
        several times worse.) When true, calibration samples and perplexity windows begin with BOS."""
        return False

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True if this adapter understands ``model``."""

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @property
    @abstractmethod
    def head_dim(self) -> int: ...

    @abstractmethod
    def layer_prefix(self, layer: int) -> str:
        """Dotted path of decoder layer ``layer`` below the model."""

    @abstractmethod
    def widths(self, layer: int) -> LayerWidths:
        """Current widths of ``layer``, read from its modules (not from the config)."""

    @abstractmethod
    def group_sets(self, layer: int) -> list[GroupSet]:
        """The attention and MLP group sets of ``layer``."""

    @abstractmethod
    def unit_output_module(self, layer: int, kind: str) -> str:
        """The linear layer whose *input* carries one slice per unit of ``kind`` (o_proj / down_proj).

        Soft masks and activation statistics hook its input: for attention the concatenated head
        outputs, for the MLP the intermediate activations.
        """

    @abstractmethod
    def after_resize(self, layer: int, widths: LayerWidths) -> None:
        """Write new widths into the module attributes of ``layer`` after its weights were sliced."""

    @abstractmethod
    def write_config(self, layer_widths: list[LayerWidths]) -> bool:
        """Record per-layer widths in the config so that the saved model reloads with them.

        Returns True when the result is a stock config (plain ``from_pretrained`` rebuilds it), False
        when the widths are recorded per layer (reload with ``hywia.load_pruned``).
        """

    def units_kept(self, layer: int, kind: str, kept: torch.Tensor, before: LayerWidths) -> None:
        """Called by the surgery after ``kept`` (sorted ids among the units ``layer`` had, ``before``) of
        ``kind`` were kept: state a unit carries outside its coupled weights follows it here (Bloom's and
        Baichuan-13B's ALiBi slopes). Nothing by default."""

    def restore_unit_state(self) -> None:
        """On a model rebuilt from a hywia config and shrunk to its widths: re-create what ``units_kept``
        tracked, from the config (``write_config`` records it). Nothing by default."""

    def add_output_biases(self, kinds: set[str]) -> None:
        """Give ``unit_output_module(layer, kind)`` a (zero) bias in every layer for each kind in ``kinds``.

        Whatever else the architecture needs for a saved model to reload those biases is done here too
        (config flags, zero biases on sibling projections, or a record that ``restore_output_biases``
        reads). Existing biases are kept.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot add output biases")

    def restore_output_biases(self) -> None:
        """Re-create the biases recorded by ``add_output_biases`` on a model freshly built from its config."""

    def lora_targets(self) -> list[str]:
        """Names (last dotted part) of every prunable linear layer: where LoRA adapters go in recovery."""
        raise NotImplementedError(f"{type(self).__name__} does not name its LoRA targets")

    def decoder_layers(self) -> list[nn.Module]:
        return [self.model.get_submodule(self.layer_prefix(i)) for i in range(self.num_layers)]

    def all_widths(self) -> list[LayerWidths]:
        return [self.widths(i) for i in range(self.num_layers)]

    def heads_per_kv(self, layer: int) -> int:
        widths = self.widths(layer)
        return widths.num_heads // widths.num_kv_heads
