"""Methods that score each group set from its weights (and gradients): random, L1/L2 magnitude,
LLM-Pruner's Taylor family (Element^1, Element^2, Vector) and the whole-group Taylor score ("group").

The formulas are the pure functions of ``magnitude`` and ``taylor``; this module only feeds them the
unit views of a group set's coupled tensors and the statistics of one gradient pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..calibration.gradients import BUDGET_FLOOR, BUFFER_SHARE, GradientStats, auto_micro_batch, collect_gradients
from ..errors import HywiaError
from ..models.groups import GroupSet, get_tensor, unit_view
from ..models.placement import input_device
from .magnitude import l1_importance, l2_importance, random_importance
from .registry import METHODS, MethodSpec, ScoreResult, ScoringContext, register_method
from .taylor import elementwise_importance, groupwise_importance, vectorwise_importance


def member_key(member) -> str:
    return f"{member.module}.{member.param}"


def unit_views(model: nn.Module, group_set: GroupSet, source: dict[str, torch.Tensor] | None = None,
               view=unit_view) -> list[torch.Tensor]:
    """Views of the group's coupled tensors -- the weights, or the matching entries of ``source`` --
    shaped by ``view``: ``unit_view`` ([units, elements]) or ``row_view`` ([units, rows, row length])."""
    views = []
    for member in group_set.members:
        tensor = get_tensor(model, member) if source is None else source[member_key(member)]
        blocks = member.unit_blocks(tensor.detach(), group_set.num_units)  # fused tensors: unit-major
        views.append(view(blocks, member.dim, group_set.num_units))
    return views


GRANULARITIES = {"element": elementwise_importance, "vector": vectorwise_importance, "group": groupwise_importance}


def taylor_importance(group_set: GroupSet, stats: GradientStats, granularity: str, *, second_order: bool = False
                      ) -> torch.Tensor:
    """One Taylor score per unit (float32) from the per-slice saliency sums of one gradient pass.

    The ``taylor`` formulas take row views ``[units, rows_per_unit, row_length]`` of s; a row of length 1
    holding the row's sum of s (Vector, group) or of |s| (Element: |.| of a non-negative sum changes
    nothing) gives each formula exactly what it computes from the full row.
    """
    if granularity not in GRANULARITIES:
        raise HywiaError(f"unknown Taylor granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}")
    views = []
    for member in group_set.members:
        sums = stats.slices[member_key(member)]
        if sums.dim != member.dim:
            raise HywiaError(f"{member_key(member)} was reduced along dim {sums.dim}, its group set cuts dim {member.dim}")
        per_slice = member.unit_blocks(sums.sums(granularity == "element", second_order), group_set.num_units, dim=0)
        views.append(per_slice.view(group_set.num_units, -1, 1))
    return GRANULARITIES[granularity](views).float()


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
        "element1": lambda: taylor_importance(group_set, stats, "element"),
        "element2": lambda: taylor_importance(group_set, stats, "element", second_order=True),
        "vector": lambda: taylor_importance(group_set, stats, "vector"),
        "group": lambda: taylor_importance(group_set, stats, "group"),
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


def prunable_dims(group_sets: list[GroupSet]) -> dict[str, int]:
    """The dimension each prunable tensor is cut along (its units' slices)."""
    dims = {}
    for group_set in group_sets:
        for member in group_set.members:
            if dims.setdefault(member_key(member), member.dim) != member.dim:
                raise HywiaError(f"{member_key(member)} is cut along two dimensions by two group sets")
    return dims


def gradient_stats(context: ScoringContext, with_fisher: bool, elementwise: bool = True) -> GradientStats:
    """Per-slice saliency sums of every prunable tensor (``elementwise``: with the sums of |s| too).

    On CUDA, where memory binds, the micro-batch grows to what ``auto_micro_batch`` allows (the whole
    calibration set when it fits: no running sums) and the running sums get ``BUFFER_SHARE`` of the
    prunable weights (``plan_passes``); on the CPU one pass with ``--batch-size`` micro-batches (fastest)."""
    tensors = prunable_tensors(context.model, context.group_sets)
    batch_size, budget = context.batch_size, None
    if input_device(context.model).type == "cuda":
        batch_size = auto_micro_batch(context.model, context.samples.shape[1], len(context.samples), context.batch_size)
        budget = int(max(BUDGET_FLOOR, BUFFER_SHARE * sum(t.numel() * t.element_size() for t in tensors.values())))
    return collect_gradients(
        context.model,
        tensors,
        context.samples,
        dims=prunable_dims(context.group_sets),
        elementwise=elementwise,
        with_fisher=with_fisher,
        batch_size=batch_size,
        buffer_budget=budget,
        progress=context.progress,
    )


def _scorer(name: str):
    def score_all(context: ScoringContext) -> ScoreResult:
        needs = METHODS[name].needs
        stats = (gradient_stats(context, needs == "fisher", elementwise=name.startswith("element"))
                 if needs in ("grad", "fisher") else None)
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
