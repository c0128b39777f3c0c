"""Forward-only baselines wired into the pipeline: Wanda-sp and FLAP on the layer-by-layer engine.

Both observe the input of each unit's output projection (``adapter.unit_output_module``: o_proj,
down_proj) on the calibration tokens, one decoder layer at a time, with the dense model's outputs
passed from layer to layer. The formulas are in ``importance.activation``.

Options (``PruneConfig.method_options``): ``device`` (where each layer runs; default: where the model
is), ``offload`` (move each layer to ``device`` and back, for models larger than the accelerator),
``compensate`` (FLAP's bias compensation, default True; with reconstruction on, its intercept takes
over that role: ``claim_bias_compensation``).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..calibration.layerwise import RunningStats, run_layerwise
from ..models.groups import ATTN, KINDS, GroupSet, unit_columns
from .activation import compensation_bias, flap_importance, wanda_sp_importance
from .registry import MethodSpec, ScoreResult, ScoringContext, register_method

WANDA_SP = "wanda-sp"
FLAP = "flap"
GLOBAL_SCORE = "global-score"  # FLAP's allocation rule (allocate.GLOBAL_SCORE)

Key = tuple[int, str]


def collect(context: ScoringContext, per_unit: Callable[[torch.Tensor, RunningStats, GroupSet], object],
            statistics=RunningStats) -> dict[Key, object]:
    """Run the layer-wise engine over the context's layers; ``per_unit(weight, stats, group_set)`` per group set
    (``statistics``: the accumulator class of the observed inputs, see ``calibration.layerwise``)."""
    model, adapter = context.model, context.adapter
    sets = {gs.key: gs for gs in context.group_sets}
    layers = sorted({layer for layer, _ in sets})

    def observe(layer: int) -> dict[str, str]:
        return {kind: adapter.unit_output_module(layer, kind) for kind in KINDS if (layer, kind) in sets}

    def process(layer: int, _module, stats: dict[str, RunningStats]) -> dict[str, object]:
        return {
            kind: per_unit(model.get_submodule(adapter.unit_output_module(layer, kind)).weight, stats[kind],
                           sets[(layer, kind)])
            for kind in stats
        }

    run = run_layerwise(
        model, adapter, context.samples, process, layers=layers, observe=observe,
        batch_size=context.batch_size, device=context.options.get("device"),
        offload=bool(context.options.get("offload", False)), progress=context.progress, statistics=statistics,
    )
    return {(layer, kind): value for layer, values in run.results.items() for kind, value in values.items()}


def _engine_details(context: ScoringContext) -> dict:
    return {"engine": "layerwise", "calibration_tokens": int(context.samples.numel()),
            "observed": "input of o_proj / down_proj"}


def score_wanda_sp(context: ScoringContext) -> ScoreResult:
    """Wanda-sp scores (``importance.activation.wanda_sp_importance``) from input L2 norms."""
    scores = collect(context, lambda weight, stats, gs: wanda_sp_importance(weight, stats.l2_norm(), gs.num_units).cpu())
    return ScoreResult(scores, _engine_details(context))


# ScoreResult.details key of a method that compensates removed units with output biases (FLAP). While it
# is True the method's own surgery hooks add the biases; ``claim_bias_compensation`` hands the job over
# to reconstruction, whose intercept replaces the bias term (else the removed means would count twice).
BIAS_COMPENSATION = "bias_compensation"
BIAS_BY_RECONSTRUCTION = "reconstruction intercept"


def claim_bias_compensation(result: ScoreResult) -> bool:
    """If ``result``'s method compensates with output biases, switch its own compensation off and return True."""
    if result.details.get(BIAS_COMPENSATION) is True:
        result.details[BIAS_COMPENSATION] = BIAS_BY_RECONSTRUCTION
        return True
    return False


def add_output_bias_terms(model, adapter, terms: dict[Key, torch.Tensor]) -> int:
    """Add ``terms[(layer, kind)]`` to the bias of ``adapter.unit_output_module(layer, kind)``.

    Kinds whose output projections have no bias get one through ``adapter.add_output_biases`` (which
    also records it so that the saved model reloads with it). Returns the number of parameters added.
    """
    def count() -> int:
        return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

    before = count()
    missing = {kind for layer, kind in terms
               if model.get_submodule(adapter.unit_output_module(layer, kind)).bias is None}
    if missing:
        adapter.add_output_biases(missing)
    with torch.no_grad():
        for (layer, kind), term in terms.items():
            bias = model.get_submodule(adapter.unit_output_module(layer, kind)).bias
            bias += term.to(device=bias.device, dtype=bias.dtype)
    return count() - before


def bias_compensation(model, adapter, means: dict[Key, torch.Tensor], details: dict):
    """Surgery hooks of FLAP's bias compensation (``activation.compensation_bias``) from the removed units'
    input means ``means[(layer, kind)]``: the term is computed before the surgery (while the removed columns
    exist) and added to the output projection's bias after it. Both do nothing once reconstruction has
    claimed the job (``claim_bias_compensation``); ``details`` gets the count of bias parameters added."""
    pending: dict[Key, torch.Tensor] = {}

    def before_surgery(keep: dict[Key, torch.Tensor]) -> None:
        if details[BIAS_COMPENSATION] is not True:  # claimed by reconstruction
            return
        for (layer, kind), kept in keep.items():
            out = model.get_submodule(adapter.unit_output_module(layer, kind))
            num_units = next(gs.num_units for gs in adapter.group_sets(layer) if gs.kind == kind)
            removed = torch.tensor(sorted(set(range(num_units)) - set(kept.tolist())), dtype=torch.long)
            if len(removed):
                columns = unit_columns(removed, out.in_features // num_units)
                pending[(layer, kind)] = compensation_bias(out.weight, means[(layer, kind)], columns)

    def after_surgery() -> None:
        if details[BIAS_COMPENSATION] is not True:  # claimed by reconstruction
            return
        details["bias_parameters_added"] = add_output_bias_terms(model, adapter, pending)

    return before_surgery, after_surgery


def score_flap(context: ScoringContext) -> ScoreResult:
    """FLAP scores (``importance.activation.flap_importance``) and, unless disabled, bias compensation.

    The compensation term ``W[:, removed] @ mean_x[removed]`` is computed before the surgery (while the
    removed columns exist) and added to the output projection's bias after it; the adapter decides how
    the bias is created and recorded so that the saved model reloads with it.
    """
    model, adapter = context.model, context.adapter
    compensate = bool(context.options.get("compensate", True))

    def per_unit(weight, stats, gs):
        score = flap_importance(weight, stats.variance(), gs.num_units, attention=gs.kind == ATTN).cpu()
        return score, stats.mean.float().cpu()

    collected = collect(context, per_unit)
    scores = {key: value[0] for key, value in collected.items()}
    means = {key: value[1] for key, value in collected.items()}
    details = {**_engine_details(context), BIAS_COMPENSATION: compensate, "standardisation": "per layer and type"}
    before_surgery, after_surgery = bias_compensation(model, adapter, means, details)
    if not compensate:
        return ScoreResult(scores, details)
    return ScoreResult(scores, details, before_surgery=before_surgery, after_surgery=after_surgery)


register_method(MethodSpec(WANDA_SP, "activations", "Wanda-sp: |W| * ||X|| over a unit's o_proj / down_proj input columns",
                           score_wanda_sp))
register_method(MethodSpec(FLAP, "activations", "FLAP: input fluctuation x ||W column||^2, standardised, bias compensation",
                           score_flap, default_allocation=GLOBAL_SCORE))
