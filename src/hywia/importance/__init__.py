"""Importance methods: a registry from method name to a scorer of group sets.

Each scorer maps a ``GroupSet`` to one score per unit (higher = more important, kept first). The
formulas live in the pure modules ``magnitude`` and ``taylor``; this module only feeds them tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import HywiaError
from ..gradients import GradientStats
from ..groups import GroupSet, get_tensor, unit_view
from .magnitude import l1_importance, l2_importance, random_importance
from .taylor import element_saliency, elementwise_importance, vectorwise_importance


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs: str  # "none", "grad", "fisher" or "activations"
    description: str
    default_allocation: str = "uniform"  # used when the user does not choose one


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("random", "none", "uniform random scores (seeded)"),
        MethodSpec("l1", "none", "sum of |w| over the group"),
        MethodSpec("l2", "none", "L2 norm of the group's weights"),
        MethodSpec("element1", "grad", "LLM-Pruner Element^1: sum |w*g|"),
        MethodSpec("element2", "fisher", "LLM-Pruner Element^2: sum |w*g - 1/2 w*F*w|"),
        MethodSpec("vector", "grad", "LLM-Pruner Vector: |sum w*g| over the whole group"),
    )
}


def register_method(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


def check_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise HywiaError(f"unknown importance method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def member_key(member) -> str:
    return f"{member.module}.{member.param}"


def unit_views(model: nn.Module, group_set: GroupSet, source: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Unit views of the group's coupled tensors: the weights, or the matching entries of ``source``."""
    views = []
    for member in group_set.members:
        tensor = get_tensor(model, member) if source is None else source[member_key(member)]
        views.append(unit_view(tensor.detach(), member.dim, group_set.num_units))
    return views


def saliencies(model: nn.Module, group_set: GroupSet, stats: GradientStats, second_order: bool) -> list[torch.Tensor]:
    """Per-member element saliency s (unit views), first or second order."""
    weights = unit_views(model, group_set)
    grads = unit_views(model, group_set, stats.grad)
    if second_order:
        if stats.fisher is None:
            raise HywiaError("second-order importance needs the Fisher diagonal (collect with with_fisher=True)")
        fishers = unit_views(model, group_set, stats.fisher)
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
    check_method(name)
    scorers: dict[str, Callable[[], torch.Tensor]] = {
        "random": lambda: random_importance(group_set.num_units, generator or torch.Generator().manual_seed(0)),
        "l1": lambda: l1_importance(unit_views(model, group_set)),
        "l2": lambda: l2_importance(unit_views(model, group_set)),
        "element1": lambda: elementwise_importance(saliencies(model, group_set, stats, second_order=False)),
        "element2": lambda: elementwise_importance(saliencies(model, group_set, stats, second_order=True)),
        "vector": lambda: vectorwise_importance(saliencies(model, group_set, stats, second_order=False)),
    }
    if name not in scorers:
        raise HywiaError(f"method {name!r} is not a per-group-set scorer")
    if METHODS[name].needs in ("grad", "fisher") and stats is None:
        raise HywiaError(f"method {name!r} needs gradients")
    scores = scorers[name]().float().cpu()
    if not torch.isfinite(scores).all():
        raise HywiaError(f"method {name!r} produced non-finite scores in layer {group_set.layer} ({group_set.kind})")
    return scores
