"""The pruning pipeline: the stages in order, each a package or module of its own.

models (adapter, groups) -> calibration (samples) -> importance (scores) -> allocate (keep counts)
-> reconstruct (optional refit of the output projections) -> models.surgery (physical removal) -> report.
Data and imports flow one way. ``prune`` changes the model in place and returns a report describing
exactly what was removed and why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .allocate import (
    ALLOCATIONS,
    AUTO_ROUND_TO,
    Allocation,
    EDGES,
    UNIFORM,
    UnitBudget,
    allocate_scored,
    allocate_uniform,
    budgets_for,
    check_feasible,
    check_ratio,
    parse_layer_range,
    resolve_edges,
    resolve_round_to,
)
from .calibration.texts import DEFAULT_CALIBRATION, calibration_samples, load_text, sequence_bos
from .errors import HywiaError
from .importance import ScoringContext, check_method, needs_calibration, score
from .importance.forward_methods import add_output_bias_terms, claim_bias_compensation
from .importance.registry import top_units
from .models import count_embedding_parameters, count_parameters
from .models.adapters import LAYER_WIDTHS_KEY, OUTPUT_BIAS_KEY, get_adapter
from .models.groups import GroupSet
from .models.placement import input_device, pruning_attention
from .models.surgery import apply_keep
from .reconstruct import check_damping, reconstruct
from .report import build_report


RATIO_BASES = ("all", "non-embedding")


@dataclass
class PruneConfig:
    """Everything that decides the pruned model. Saved, fully resolved, in the report."""

    ratio: float
    ratio_base: str = "all"  # "all": ratio of ALL parameters; "non-embedding": of those outside embeddings / LM head
    method: str = "hywia"
    allocation: str | None = None  # "uniform": same widths in every layer; "global": per-layer; None: method's default
    layers: str | None = None  # "A:B" prunes layers A..B-1 only (default: all)
    round_to: int | str = AUTO_ROUND_TO  # MLP widths stay multiples of this; auto: 64/128 on GPUs, 1 on CPU
    min_width: float | None = None  # every pruned layer keeps at least this fraction of its units (None: method's default)
    calibration: str | None = None  # file, "mixed" (default), "lambada", or a hub text name
    # 128 x 128 tokens: the reconstruction's ridge fits need more tokens than the widest input (1536 on
    # SmolLM2); chosen with reconstruction on validation data (BENCHMARKS.md, "Issue 10")
    num_samples: int = 128
    seq_len: int = 128
    seed: int = 42
    batch_size: int = 4
    progress: bool = True
    method_options: dict = field(default_factory=dict)
    # Reconstruction (METHOD.md 3b): refit o_proj / down_proj on the pruned model's calibration inputs.
    reconstruct: bool = True  # on: every method, both ratios, on validation data (BENCHMARKS.md, "Issue 10")
    # Relative ridge strength toward the kept weights (lambda = damping * mean diag of the kept Gram);
    # 0.1 beat 1.0 on validation data at 20% and 50% (inf = no update).
    reconstruct_damping: float = 0.1
    reconstruct_samples: int | None = None  # None: reuse the scoring calibration samples
    reconstruct_seq_len: int | None = None  # None: the scoring calibration length
    # The allocation gets as close to the ratio as the constraints allow; further than
    # allocate.TARGET_TOLERANCE is a note in the report (and a warning), or with strict an error.
    strict: bool = False

    def validate(self) -> None:
        check_ratio(self.ratio)
        if self.ratio_base not in RATIO_BASES:
            raise HywiaError(f"--ratio-base must be one of {', '.join(RATIO_BASES)}, got {self.ratio_base!r}")
        check_damping(self.reconstruct_damping)
        resolve_round_to(self.round_to, "cpu", [])  # a number >= 1 or auto
        for name, least in (("reconstruct_samples", 1), ("reconstruct_seq_len", 2)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < least):
                raise HywiaError(f"--{name.replace('_', '-').replace('seq-len', 'len')} must be an integer >= {least}, "
                                 f"got {value!r}")
        spec = check_method(self.method)
        if self.allocation is None:
            self.allocation = spec.default_allocation
        if self.min_width is None and self.allocation != EDGES:  # edges picks its floor from the layers
            self.min_width = spec.default_min_width
        if self.allocation not in ALLOCATIONS:
            raise HywiaError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


GRADIENT_NEEDS = ("grad", "fisher")


def check_dtype(method: str, dtype: torch.dtype) -> None:
    """Gradient methods refuse float16: per-weight products w * g underflow and the loss scale overflows
    in half precision (no loss scaling here), so scores would be silently wrong."""
    if dtype == torch.float16 and check_method(method).needs in GRADIENT_NEEDS:
        raise HywiaError(f"--method {method} needs gradients, which float16 cannot hold reliably; "
                         f"use --dtype bfloat16 or float32")


def target_ratio_of_all(config: PruneConfig, total: int, embedding: int) -> float:
    """``config.ratio`` as a fraction of ALL parameters (``--ratio-base non-embedding``: the same count of
    parameters as that fraction of those outside the embeddings and LM head)."""
    if config.ratio_base == "non-embedding":
        return config.ratio * (total - embedding) / total
    return config.ratio


@dataclass
class _Plan:
    """What ``check_plan`` and ``prune`` both derive from the model's shapes and the config."""

    config: PruneConfig  # with --allocation edges made concrete
    allocation_choice: str | None
    layers: list[int]
    group_sets: list[GroupSet]
    total: int
    embedding: int
    target_ratio: float
    round_to: int
    round_note: str | None
    budgets: list[UnitBudget]
    uniform: Allocation | None  # uniform widths are known before scoring


def _plan(model: nn.Module, config: PruneConfig, device: str) -> _Plan:
    """Layer range, concrete allocation, round-to, budgets, feasibility and (uniform widths) the allocation
    itself with --strict: every check that needs only shapes, so a bad request fails before any work."""
    config.validate()
    adapter = get_adapter(model)
    layers = parse_layer_range(config.layers, adapter.num_layers)
    config, allocation_choice = _concrete_allocation(config, layers, adapter.num_layers)
    group_sets = [gs for layer in layers for gs in adapter.group_sets(layer)]
    total, embedding = count_parameters(model), count_embedding_parameters(model)
    target_ratio = target_ratio_of_all(config, total, embedding)
    params_per_unit = {gs.key: gs.params_per_unit(model) for gs in group_sets}
    round_to, round_note = resolve_round_to(config.round_to, device, group_sets)
    budgets = budgets_for(group_sets, params_per_unit, round_to, config.min_width)
    check_feasible(budgets, target_ratio, total)
    uniform = allocate_uniform(budgets, target_ratio, total) if config.allocation == UNIFORM else None
    if uniform is not None:
        _check_strict(uniform, config)
    return _Plan(config, allocation_choice, layers, group_sets, total, embedding, target_ratio,
                 round_to, round_note, budgets, uniform)


def check_plan(model: nn.Module, config: PruneConfig, device: str = "cpu") -> None:
    """The checks ``prune`` makes before any work -- layer range, feasibility, and for uniform widths the
    allocation itself (``--strict``) -- on a model whose shapes alone matter (e.g. one on the meta device,
    so that a bad request fails before the weights are loaded); ``device``: where it will run (--round-to auto)."""
    _plan(model, config, device)


def _concrete_allocation(config: PruneConfig, layers: list[int], num_layers: int) -> tuple[PruneConfig, str | None]:
    """``config`` with ``--allocation edges`` resolved for these layers (``allocate.resolve_edges``)."""
    allocation, min_width, why = resolve_edges(config.allocation, config.min_width, layers, num_layers)
    if why is None:
        return config, None
    return replace(config, allocation=allocation, min_width=min_width if min_width is not None else 0.0), why


def _check_strict(allocation, config: PruneConfig) -> None:
    note = allocation.note()
    if note and config.strict:
        raise HywiaError(f"{note} (--strict)")


@dataclass
class PruneResult:
    model: nn.Module
    report: dict


def prune(model: nn.Module, tokenizer, config: PruneConfig, *, calibration_ids: torch.Tensor | None = None,
          reconstruction_ids: torch.Tensor | None = None) -> PruneResult:
    """Prune ``model`` in place to remove ``config.ratio`` of its parameters; return it with a report.

    ``calibration_ids`` ([N, L] token ids) overrides the calibration text, e.g. to share one sample set
    between several methods; ``reconstruction_ids`` likewise fixes the samples of the reconstruction
    stage (default: the scoring samples, or ``config.reconstruct_samples`` x ``reconstruct_seq_len``
    drawn from the same text with the same seed).
    """
    config.validate()
    started = time.perf_counter()
    adapter = get_adapter(model)
    for dtype in {p.dtype for p in model.parameters()}:
        check_dtype(config.method, dtype)
    plan = _plan(model, config, str(input_device(model)))  # fails on an impossible request before any work
    config, layers, group_sets, budgets = plan.config, plan.layers, plan.group_sets, plan.budgets
    params_before, embedding_params, target_ratio = plan.total, plan.embedding, plan.target_ratio
    widths_before = adapter.all_widths()
    allocation = plan.uniform

    texts: list[str] = []  # the calibration text, read once however many sample sets are drawn

    def draw_samples(num_samples: int, seq_len: int) -> torch.Tensor:
        if tokenizer is None:
            raise HywiaError("calibration samples need a tokenizer (or pass calibration_ids / reconstruction_ids; "
                             "data-free methods need samples only with reconstruct=True)")
        if not texts:
            texts.append(load_text(config.calibration, DEFAULT_CALIBRATION))
        return calibration_samples(tokenizer, texts[0], num_samples, seq_len, config.seed,
                                   bos_id=sequence_bos(model, tokenizer))

    samples = None
    if needs_calibration(config.method):
        samples = calibration_ids if calibration_ids is not None else draw_samples(config.num_samples, config.seq_len)
    rec_samples = None
    if config.reconstruct:  # data-free methods get samples here too
        if reconstruction_ids is not None:
            rec_samples = reconstruction_ids
        elif config.reconstruct_samples is not None or config.reconstruct_seq_len is not None:
            rec_samples = draw_samples(config.reconstruct_samples or config.num_samples,
                                       config.reconstruct_seq_len or config.seq_len)
        elif calibration_ids is not None or samples is not None:  # the scoring samples
            rec_samples = samples if samples is not None else calibration_ids
        else:
            rec_samples = draw_samples(config.num_samples, config.seq_len)

    def keep_counts_for(scores):
        if allocation is not None:
            return allocation.keep_counts
        return allocate_scored(config.allocation, budgets, scores, target_ratio, params_before).keep_counts

    context = ScoringContext(model, adapter, group_sets, samples, config.seed, config.batch_size, config.progress,
                             dict(config.method_options), config.allocation, keep_counts_for,
                             config.reconstruct_damping if config.reconstruct else None)
    stages = {"setup": time.perf_counter() - started}
    clock = time.perf_counter()
    with pruning_attention(input_device(model)):
        scored = score(config.method, context)
    stages["scoring"], clock = time.perf_counter() - clock, time.perf_counter()
    if allocation is None:
        allocation = allocate_scored(config.allocation, budgets, scored.scores, target_ratio, params_before)
        _check_strict(allocation, config)

    keep = {key: top_units(scored.scores[key], count) for key, count in allocation.keep_counts.items()}
    with_bias = config.reconstruct and claim_bias_compensation(scored)  # the intercept replaces FLAP's bias
    if scored.before_surgery is not None:
        scored.before_surgery(keep)
    rebuilt, added = None, 0
    if config.reconstruct:
        with pruning_attention(input_device(model)):
            rebuilt = reconstruct(model, adapter, keep, rec_samples, damping=config.reconstruct_damping,
                                  with_bias=with_bias, batch_size=config.batch_size, progress=config.progress)
    stages["reconstruction"], clock = time.perf_counter() - clock, time.perf_counter()
    widths_after = apply_keep(model, adapter, keep)
    params_after = count_parameters(model)
    if params_before - params_after != allocation.removed_params:
        raise RuntimeError(
            f"surgery removed {params_before - params_after} parameters, the plan said {allocation.removed_params}"
        )
    if scored.after_surgery is not None:
        scored.after_surgery()
        params_after = count_parameters(model)  # it may add parameters (FLAP's compensation biases)
    if rebuilt is not None and rebuilt.bias_terms:
        added = add_output_bias_terms(model, adapter, rebuilt.bias_terms)
        params_after = count_parameters(model)
    stages["surgery"] = time.perf_counter() - clock
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
    # seconds per stage (the allocation after scoring counts toward reconstruction); the method's own split is
    # in method_details
    report["seconds_per_stage"] = {name: round(value, 3) for name, value in stages.items()}
    report["parameters"]["target_ratio"] = target_ratio  # of all parameters, whatever the base asked in
    report["parameters"]["embedding"] = embedding_params
    report["parameters"]["allocation_note"] = allocation.note()
    report["parameters"]["allocation_choice"] = plan.allocation_choice
    report["parameters"]["round_to"] = plan.round_to
    report["parameters"]["round_to_note"] = plan.round_note
    report["parameters"]["achieved_ratio_non_embedding"] = (params_before - params_after) / (params_before - embedding_params)
    report["reconstruction"] = None if rebuilt is None else {
        "damping": config.reconstruct_damping, "samples": list(rec_samples.shape),
        "bias_parameters_added": added, **rebuilt.summary()}
    return PruneResult(model, report)
