"""The one registry of importance methods: a name -> what it needs, and the scorer that fills in scores.

A scorer takes a :class:`ScoringContext` (the model, its adapter, the group sets to score, calibration
samples, options) and returns a :class:`ScoreResult`: one score per unit of every group set (higher =
more important, kept first) plus method-specific details for the report and optional hooks around the
surgery. Register a new method with ``register_method(MethodSpec(...))`` in its own module and import
that module in ``importance/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import HywiaError
from ..models.adapters import ModelAdapter
from ..models.groups import GroupSet

Scores = dict[tuple[int, str], torch.Tensor]


@dataclass
class ScoringContext:
    model: nn.Module
    adapter: ModelAdapter
    group_sets: list[GroupSet]
    samples: torch.Tensor | None  # [N, L] calibration token ids (None for data-free methods)
    seed: int
    batch_size: int
    progress: bool
    options: dict = field(default_factory=dict)  # method-specific settings (e.g. HyWIA's)
    allocation: str = "uniform"
    # Keep counts the allocation gives for candidate scores: lets a method aim its search at the widths
    # that will really be kept (HyWIA's soft masks). Uniform allocation ignores the scores.
    allocate: Callable[[dict], dict] | None = None
    # The ridge damping of the reconstruction that will follow the removal (None: no reconstruction):
    # lets a method score units as the reconstructed model will see them (HyWIA's compensated gates).
    reconstruct_damping: float | None = None


@dataclass
class ScoreResult:
    scores: Scores
    details: dict = field(default_factory=dict)  # method-specific facts for the report
    # Called with the final keep indices (keyed by (layer, kind)) before the weights are sliced, while
    # the removed units still exist: e.g. FLAP's bias compensation folds them into a bias here.
    before_surgery: Callable[[dict[tuple[int, str], torch.Tensor]], None] | None = None
    # Called once the units are gone (after the parameter check); may add parameters, e.g. FLAP's
    # compensation biases, which would otherwise be sliced by the surgery.
    after_surgery: Callable[[], None] | None = None


Scorer = Callable[[ScoringContext], ScoreResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs: str  # "none", "grad", "fisher" or "activations"
    description: str
    scorer: Scorer
    default_allocation: str = "uniform"  # used when the user does not choose one
    default_min_width: float = 0.0  # per-layer floor used when the user does not choose one


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


def check_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise HywiaError(f"unknown importance method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def needs_calibration(method: str) -> bool:
    return check_method(method).needs != "none"


def score(method: str, context: ScoringContext) -> ScoreResult:
    """Scores for every group set of ``context`` with ``method``."""
    return check_method(method).scorer(context)


def top_units(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores, sorted ascending (ties broken by lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return torch.sort(order[:count]).values
