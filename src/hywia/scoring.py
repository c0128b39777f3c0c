"""Turn a method name into scores for every group set: the gradient pass and per-method dispatch.

Methods that need more than per-group-set formulas (HyWIA's fusion, forward-only baselines) register
a whole-model scorer with ``register_scorer``; everything else goes through ``importance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .adapters import ModelAdapter
from .gradients import GradientStats, collect_gradients
from .groups import GroupSet, get_tensor
from .importance import check_method, member_key, score_group_set

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


WholeModelScorer = Callable[[ScoringContext], ScoreResult]
SCORERS: dict[str, WholeModelScorer] = {}


def register_scorer(name: str, scorer: WholeModelScorer) -> None:
    SCORERS[name] = scorer


def prunable_tensors(model: nn.Module, group_sets: list[GroupSet]) -> dict[str, nn.Parameter]:
    tensors = {}
    for group_set in group_sets:
        for member in group_set.members:
            tensors[member_key(member)] = get_tensor(model, member)
    return tensors


def gradient_stats(context: ScoringContext, with_fisher: bool) -> GradientStats:
    return collect_gradients(
        context.model,
        prunable_tensors(context.model, context.group_sets),
        context.samples,
        with_fisher=with_fisher,
        batch_size=context.batch_size,
        progress=context.progress,
    )


def score(method: str, context: ScoringContext) -> ScoreResult:
    """Scores for every group set of ``context`` with ``method``."""
    spec = check_method(method)
    if method in SCORERS:
        return SCORERS[method](context)
    stats = gradient_stats(context, spec.needs == "fisher") if spec.needs in ("grad", "fisher") else None
    generator = torch.Generator().manual_seed(context.seed)
    scores = {
        gs.key: score_group_set(method, context.model, gs, stats=stats, generator=generator)
        for gs in context.group_sets
    }
    return ScoreResult(scores)


def needs_calibration(method: str) -> bool:
    return check_method(method).needs != "none"
