"""Reconstruction engine: refit every pruned output projection, layer by layer, on the pruned model's inputs.

Runs BEFORE the surgery, on the still dense-shaped model. The decoder-layer inputs of the calibration
samples are caught once (``calibration.layerwise.capture_layer_inputs``); then, for each decoder layer
in order:

1. hook the input of the attention output projection, run the layer on every batch accumulating the
   Gram matrix ``G = X X^T`` (float64; plus per-feature sums and the token count for an intercept),
   solve (``ridge.solve_compensation``), write ``W_S'`` into the kept columns and ZERO the removed ones:
   from then on the dense-shaped layer computes exactly what the pruned layer will;
2. run the layer again to accumulate the Gram of the MLP output projection's input (which now sees the
   updated attention), solve, update, zero the removed columns;
3. run the layer once more and pass its outputs on as the next layer's inputs, so that every layer is
   fitted on the activations of the pruned model, not of the dense one.

Passes 1 and 2 stop the layer right after the hooked projection's input is seen. Intercepts (where a
projection already has a bias, or where asked for) are added to the projection's output by a forward
hook while its layer runs, and returned so the caller adds them as biases once the units are gone.
Only one Gram matrix exists at a time; without an intercept the solve works inside it (``consume_and_solve``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.layerwise import GramStats, _layer_output, _to_device, capture_layer_inputs
from ..errors import HywiaError
from ..models.adapters import ModelAdapter
from ..models.groups import KINDS, unit_columns
from ..models.placement import input_device
from .ridge import check_damping, consume_and_solve, relative_errors, solve_compensation

Key = tuple[int, str]


@dataclass
class ProjectionFacts:
    """What reconstruction did to one output projection (for the report)."""

    layer: int
    kind: str
    module: str
    tokens: int
    kept_columns: int
    removed_columns: int
    lam: float
    intercept: bool
    solver: str
    error_before: float  # ||W_S X_S - W X|| / ||W X||: removal alone
    error_after: float  # the same with the refitted W_S' (and intercept)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "module": self.module, "tokens": self.tokens,
                "kept_columns": self.kept_columns, "removed_columns": self.removed_columns,
                "lambda": float(f"{self.lam:.6g}"), "intercept": self.intercept, "solver": self.solver,
                "error_before": float(f"{self.error_before:.6g}"), "error_after": float(f"{self.error_after:.6g}")}


@dataclass
class Reconstruction:
    facts: dict[Key, ProjectionFacts] = field(default_factory=dict)
    bias_terms: dict[Key, torch.Tensor] = field(default_factory=dict)  # intercepts to add after the surgery
    tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-ready facts: per projection, and the mean relative errors before / after."""
        facts = [f.to_dict() for _, f in sorted(self.facts.items())]
        changed = [f for f in self.facts.values() if f.removed_columns]
        mean = (lambda values: float(f"{sum(values) / len(values):.6g}") if values else 0.0)
        return {
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "projections_refitted": len(changed),
            "intercepts": len(self.bias_terms),
            "mean_error_before": mean([f.error_before for f in changed]),
            "mean_error_after": mean([f.error_after for f in changed]),
            "fallback_solves": sum(f.solver != "cholesky" for f in changed),
            "per_projection": facts,
        }


class _Stop(Exception):
    """Raised once the hooked projection's input was seen: the rest of the layer is not needed."""


def _columns(adapter: ModelAdapter, layer: int, kind: str, module: nn.Linear, kept_units: torch.Tensor):
    group_set = next(gs for gs in adapter.group_sets(layer) if gs.kind == kind)
    if module.in_features % group_set.num_units:
        raise HywiaError(f"{adapter.unit_output_module(layer, kind)}: {module.in_features} input columns do not "
                         f"split into {group_set.num_units} units")
    kept_units = torch.sort(kept_units.to(torch.long).cpu()).values
    removed_units = torch.tensor(sorted(set(range(group_set.num_units)) - set(kept_units.tolist())), dtype=torch.long)
    size = module.in_features // group_set.num_units
    return unit_columns(kept_units, size), unit_columns(removed_units, size)


class _GramAccumulator(GramStats):
    """Forward pre-hook: fold the module's input into the Gram statistics, then stop the layer."""

    def __call__(self, _module, args):
        self.add_batch(args[0])
        raise _Stop


def _add_term(term: torch.Tensor):
    def hook(_module, _args, output):
        return output + term.to(dtype=output.dtype, device=output.device)

    return hook


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    adapter: ModelAdapter,
    keep: dict[Key, torch.Tensor],
    samples: torch.Tensor,
    *,
    damping: float,
    with_bias: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> Reconstruction:
    """Refit the output projection of every ``(layer, kind)`` in ``keep`` (kept unit indices) in place.

    The model stays dense-shaped: kept columns get ``W_S'``, removed columns become zero, so the
    surgery that follows is exact. An intercept is fitted where the projection already has a bias, and
    everywhere when ``with_bias`` (a method that compensates with biases, e.g. FLAP); intercepts are
    returned in ``Reconstruction.bias_terms`` (float32, on the projection's device) and NOT applied:
    add them to the biases after the surgery. Layers and kinds missing from ``keep`` are untouched
    but still propagate. ``device``: where the caught layer inputs are kept (default: the embedding's
    device); each layer runs where it lives.
    """
    started = time.perf_counter()
    damping = check_damping(damping)
    if samples is None or samples.ndim != 2 or len(samples) == 0:
        raise HywiaError("reconstruction needs calibration token ids of shape [N, L]")
    if batch_size < 1:
        raise HywiaError(f"--batch-size must be a positive integer, got {batch_size}")
    result = Reconstruction(tokens=int(samples.numel()))
    if not keep:
        return result
    last = max(layer for layer, _ in keep)
    decoder_layers = adapter.decoder_layers()
    target = torch.device(device) if device is not None else input_device(model)
    inputs = capture_layer_inputs(model, adapter, samples, batch_size, device=target)
    hidden = inputs.hidden
    bar = tqdm(range(last + 1), desc="reconstruction", unit="layer", disable=not progress, leave=False)
    for index in bar:
        layer = decoder_layers[index]
        run_device = next(layer.parameters()).device
        hidden = [h.to(run_device) for h in hidden]
        kwargs = [_to_device(kw, run_device) for kw in inputs.kwargs[index]]
        term_hooks = []
        try:
            for kind in KINDS:  # attention first: the MLP is fitted on the updated attention's outputs
                if (index, kind) not in keep:
                    continue
                path = adapter.unit_output_module(index, kind)
                module = model.get_submodule(path)
                kept, removed = _columns(adapter, index, kind, module, keep[(index, kind)])
                intercept = with_bias or module.bias is not None
                facts = ProjectionFacts(index, kind, path, 0, len(kept), len(removed), 0.0, intercept, "cholesky",
                                        0.0, 0.0)
                result.facts[(index, kind)] = facts
                if len(removed) == 0:
                    continue
                stats = _GramAccumulator(module.in_features, module.weight.device)
                handle = module.register_forward_pre_hook(stats)
                try:
                    for h, kw in zip(hidden, kwargs):
                        try:
                            layer(h, **kw)
                        except _Stop:
                            pass
                finally:
                    handle.remove()
                if stats.count == 0:
                    raise HywiaError(f"{path} was not called while its layer ran; cannot reconstruct it")
                facts.tokens = stats.count
                fit = None if intercept else consume_and_solve(module.weight, stats.gram, kept, removed, damping)
                if fit is not None:  # the Gram became the factor: no second d_in^2 float64 matrix
                    solution, facts.error_before, facts.error_after = fit.solution, fit.error_before, fit.error_after
                else:
                    extra = dict(input_sum=stats.sum, count=stats.count) if intercept else {}
                    solution = solve_compensation(module.weight, stats.gram, kept, removed, damping, **extra)
                    facts.error_before, facts.error_after = relative_errors(module.weight, stats.gram, kept, removed,
                                                                            solution, **extra)
                del stats
                facts.lam, facts.solver = solution.lam, solution.solver
                weight = module.weight
                kept_d, removed_d = kept.to(weight.device), removed.to(weight.device)
                updated = weight.index_select(1, kept_d).double().add_(solution.delta.to(weight.device))
                weight[:, kept_d] = updated.to(weight.dtype)
                weight[:, removed_d] = 0
                if solution.bias is not None:
                    term = solution.bias.to(device=weight.device, dtype=torch.float32)
                    result.bias_terms[(index, kind)] = term
                    term_hooks.append(module.register_forward_hook(_add_term(term)))
            outputs = [_layer_output(layer(h, **kw)) for h, kw in zip(hidden, kwargs)]
        finally:
            for handle in term_hooks:
                handle.remove()
        hidden = outputs
        inputs.kwargs[index] = []  # free this layer's masks / rotary tables unless shared
    result.seconds = time.perf_counter() - started
    return result
