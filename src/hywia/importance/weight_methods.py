"""Methods that score each group set from its weights (and gradients): random, L1/L2 magnitude,
LLM-Pruner's Taylor family (Element^1, Element^2, Vector) and the whole-group Taylor score ("group").

The formulas are the pure functions of ``magnitude`` and ``taylor``; this module only feeds them the
unit views of a group set's coupled tensors and the statistics of one gradient pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..calibration.gradients import GradientStats, collect_gradients
from ..errors import HywiaError
from ..models.groups import GroupSet, get_tensor, row_view, unit_view
from .magnitude import l1_importance, l2_importance, random_importance
from .registry import METHODS, MethodSpec, ScoreResult, ScoringContext, register_method
from .taylor import element_saliency, elementwise_importance, groupwise_importance, vectorwise_importance


def member_key(member) -> str:
    return f"{member.module}.{member.param}"


def unit_views(model: nn.Module, group_set: GroupSet, source: dict[str, torch.Tensor] | None = None,
               view=unit_view) -> list[torch.Tensor]:
    """Views of the group's coupled tensors -- the weights, or the matching entries of ``source`` --
    shaped by ``view``: ``unit_view`` ([units, elements]) or ``row_view`` ([units, rows, row length])."""
    views = []
    for member in group_set.members:
        tensor = get_tensor(model, member) if source is None else source[member_key(member)]
        views.append(view(tensor.detach(), member.dim, group_set.num_units))
    return views


def saliencies(model: nn.Module, group_set: GroupSet, stats: GradientStats, second_order: bool) -> list[torch.Tensor]:
    """Per-member element saliency s as row views ``[units, rows_per_unit, row_length]``."""
    weights = unit_views(model, group_set, view=row_view)
    grads = unit_views(model, group_set, stats.grad, view=row_view)
    if second_order:
        if stats.fisher is None:
            raise HywiaError("second-order importance needs the Fisher diagonal (collect with with_fisher=True)")
        fishers = unit_views(model, group_set, stats.fisher, view=row_view)
        return [element_saliency(w, g.to(w.device), f.to(w.device)) for w, g, f in zip(weights, grads, fishers)]
    return [element_saliency(w, g.to(w.device)) for w, g in zip(weights, grads)]


def score_group_set(
    name: str,
    model: nn.Module,
    group_set: GroupSet,
    *,
    stats: GradientStats | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Score every unit of ``group_set`` with method ``name`` (a CPU float32 tensor)."""
    scorers: dict[str, Callable[[], torch.Tensor]] = {
        "random": lambda: random_importance(group_set.num_units, generator or torch.Generator().manual_seed(0)),
        "l1": lambda: l1_importance(unit_views(model, group_set)),
        "l2": lambda: l2_importance(unit_views(model, group_set)),
        "element1": lambda: elementwise_importance(saliencies(model, group_set, stats, second_order=False)),
        "element2": lambda: elementwise_importance(saliencies(model, group_set, stats, second_order=True)),
        "vector": lambda: vectorwise_importance(saliencies(model, group_set, stats, second_order=False)),
        "group": lambda: groupwise_importance(saliencies(model, group_set, stats, second_order=False)),
    }
    if name not in scorers:
        raise HywiaError(f"method {name!r} is not a per-group-set scorer")
    if METHODS[name].needs in ("grad", "fisher") and stats is None:
        raise HywiaError(f"method {name!r} needs gradients")
    scores = scorers[name]().float().cpu()
    if not torch.isfinite(scores).all():
        raise HywiaError(f"method {name!r} produced non-finite scores in layer {group_set.layer} ({group_set.kind})")
    return scores


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


def _scorer(name: str):
    def score_all(context: ScoringContext) -> ScoreResult:
        needs = METHODS[name].needs
        stats = gradient_stats(context, needs == "fisher") if needs in ("grad", "fisher") else None
        generator = torch.Generator().manual_seed(context.seed)
        return ScoreResult({
            gs.key: score_group_set(name, context.model, gs, stats=stats, generator=generator)
            for gs in context.group_sets
        })

    return score_all


for _name, _needs, _description in (
    ("random", "none", "uniform random scores (seeded)"),
    ("l1", "none", "sum of |w| over the group"),
    ("l2", "none", "L2 norm of the group's weights"),
    ("element1", "grad", "LLM-Pruner Element^1: sum |w*g|"),
    ("element2", "fisher", "LLM-Pruner Element^2: sum |w*g - 1/2 w*F*w|"),
    ("vector", "grad", "LLM-Pruner Vector: sum over the group's weight rows of |sum w*g along the row|"),
    ("group", "grad", "whole-group Taylor: |sum w*g| over all the group's elements (HyWIA's coarse score)"),
):
    register_method(MethodSpec(_name, _needs, _description, _scorer(_name)))
