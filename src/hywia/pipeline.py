"""The pruning pipeline: the stages in order, each a package or module of its own.

models (adapter, groups) -> calibration (samples) -> importance (scores) -> allocate (keep counts)
-> models.surgery (physical removal) -> report. Data and imports flow one way. ``prune`` changes the model in place and
returns a report describing exactly what was removed and why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .allocate import (
    ALLOCATIONS,
    UNIFORM,
    allocate_scored,
    allocate_uniform,
    budgets_for,
    check_feasible,
    check_ratio,
    parse_layer_range,
)
from .calibration.texts import DEFAULT_CALIBRATION, calibration_samples, load_text, sequence_bos
from .errors import HywiaError
from .importance import ScoringContext, check_method, needs_calibration, score
from .importance.registry import top_units
from .models import count_parameters
from .models.adapters import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, get_adapter
from .models.surgery import apply_keep
from .report import build_report


@dataclass
class PruneConfig:
    """Everything that decides the pruned model. Saved, fully resolved, in the report."""

    ratio: float
    method: str = "hywia"
    allocation: str | None = None  # "uniform": same widths in every layer; "global": per-layer; None: method's default
    layers: str | None = None  # "A:B" prunes layers A..B-1 only (default: all)
    round_to: int = 1  # MLP widths stay multiples of this
    min_width: float = 0.0  # every pruned layer keeps at least this fraction of its heads and channels
    calibration: str | None = None  # file, "lambada" (default), or a hub text name
    num_samples: int = 10
    seq_len: int = 128
    seed: int = 42
    batch_size: int = 4
    progress: bool = True
    method_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        check_ratio(self.ratio)
        spec = check_method(self.method)
        if self.allocation is None:
            self.allocation = spec.default_allocation
        if self.allocation not in ALLOCATIONS:
            raise HywiaError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneResult:
    model: nn.Module
    report: dict


def prune(model: nn.Module, tokenizer, config: PruneConfig, *, calibration_ids: torch.Tensor | None = None) -> PruneResult:
    """Prune ``model`` in place to remove ``config.ratio`` of its parameters; return it with a report.

    ``calibration_ids`` ([N, L] token ids) overrides the calibration text, e.g. to share one sample set
    between several methods.
    """
    config.validate()
    started = time.perf_counter()
    adapter = get_adapter(model)
    layers = parse_layer_range(config.layers, adapter.num_layers)
    widths_before = adapter.all_widths()
    group_sets = [gs for layer in layers for gs in adapter.group_sets(layer)]
    params_before = count_parameters(model)
    params_per_unit = {gs.key: gs.params_per_unit(model) for gs in group_sets}
    budgets = budgets_for(group_sets, params_per_unit, config.round_to, config.min_width)

    # Fail on an impossible request before any expensive work.
    check_feasible(budgets, config.ratio, params_before)
    allocation = allocate_uniform(budgets, config.ratio, params_before) if config.allocation == UNIFORM else None

    samples = None
    if needs_calibration(config.method):
        if calibration_ids is not None:
            samples = calibration_ids
        else:
            text = load_text(config.calibration, DEFAULT_CALIBRATION)
            samples = calibration_samples(tokenizer, text, config.num_samples, config.seq_len, config.seed,
                                          bos_id=sequence_bos(model, tokenizer))

    def keep_counts_for(scores):
        if allocation is not None:
            return allocation.keep_counts
        return allocate_scored(config.allocation, budgets, scores, config.ratio, params_before).keep_counts

    context = ScoringContext(model, adapter, group_sets, samples, config.seed, config.batch_size, config.progress,
                             dict(config.method_options), config.allocation, keep_counts_for)
    scored = score(config.method, context)
    if allocation is None:
        allocation = allocate_scored(config.allocation, budgets, scored.scores, config.ratio, params_before)

    keep = {key: top_units(scored.scores[key], count) for key, count in allocation.keep_counts.items()}
    if scored.before_surgery is not None:
        scored.before_surgery(keep)
    widths_after = apply_keep(model, adapter, keep)
    params_after = count_parameters(model)
    if params_before - params_after != allocation.removed_params:
        raise RuntimeError(
            f"surgery removed {params_before - params_after} parameters, the plan said {allocation.removed_params}"
        )
    if scored.after_surgery is not None:
        scored.after_surgery()
        params_after = count_parameters(model)  # it may add parameters (FLAP's compensation biases)
    report = build_report(
        config=config.to_dict(),
        layers=layers,
        widths_before=widths_before,
        widths_after=widths_after,
        keep=keep,
        scores=scored.scores,
        params_before=params_before,
        params_after=params_after,
        method_details=scored.details,
        seconds=time.perf_counter() - started,
        stock_config=not (hasattr(model.config, LAYER_WIDTHS_KEY) or getattr(model.config, OUTPUT_BIAS_KEY, None)),
    )
    return PruneResult(model, report)
