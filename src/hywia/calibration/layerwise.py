"""Layer-by-layer calibration: forward-only statistics without holding activations of the whole model.

The wanda / sparsegpt loop:

1. *catch* the inputs of the decoder layers: run the model on each calibration batch with every
   decoder layer replaced by a pass-through that records what transformers hands it (hidden states
   for layer 0; for every layer the keyword arguments: attention mask, position embeddings, position
   ids, cache disabled). Recording per layer keeps models whose layers get different masks or rotary
   tables (sliding-window layers) right; identical tensors are shared, not copied. The last
   pass-through stops the forward, so the final norm and the LM head never run.
2. for each layer: hook the inputs of the observed modules, run every batch through the layer while
   :class:`RunningStats` accumulate per-feature sums (no activation is kept), hand the statistics to
   ``process``, and pass the layer's outputs on as the next layer's inputs.

Only the layer being processed has to sit on the accelerator: with ``offload=True`` each layer is
moved to ``device``, processed and moved back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.adapters import ModelAdapter
from ..errors import HywiaError
from ..models.placement import input_device


def _observations(x: torch.Tensor, features: int, device: torch.device) -> torch.Tensor:
    """``x`` [..., features] as float64 rows on ``device``: every leading position is one observation."""
    if x.shape[-1] != features:
        raise HywiaError(f"statistics expect {features} features, got a tensor of shape {tuple(x.shape)}")
    return x.detach().reshape(-1, features).to(device=device, dtype=torch.float64)


class RunningStats:
    """Per-feature count, mean, M2 (sum of squared deviations from the mean) and sum of squares.

    ``add_batch`` merges a batch with Chan et al.'s parallel update, so statistics accumulated batch by
    batch equal those of one pass over all rows (up to rounding): with ``n = n_a + n_b`` and
    ``d = mean_b - mean_a``, ``mean = mean_a + d * n_b / n`` and ``M2 = M2_a + M2_b + d^2 n_a n_b / n``.
    Accumulators are float64 whatever the activation dtype.
    """

    def __init__(self, features: int, device: torch.device | str | None = None):
        self.features = features
        self.count = 0
        self.mean = torch.zeros(features, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(features, dtype=torch.float64, device=device)
        self.sum_squares = torch.zeros(features, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        """Fold in ``x`` of shape ``[..., features]``: every leading position is one observation."""
        rows = _observations(x, self.features, self.mean.device)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        mean_b = rows.mean(dim=0)
        m2_b = (rows - mean_b).pow(2).sum(dim=0)
        n_a, total = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta.pow(2) * (n_a * n_b / total)
        self.sum_squares += rows.pow(2).sum(dim=0)
        self.count = total

    def variance(self, unbiased: bool = True) -> torch.Tensor:
        """Per-feature sample variance (``M2 / (count - 1)``; ``M2 / count`` if not ``unbiased``)."""
        if self.count < 2:
            raise HywiaError("a variance needs at least two calibration tokens")
        return self.m2 / (self.count - 1 if unbiased else self.count)

    def l2_norm(self) -> torch.Tensor:
        """Per-feature L2 norm over all observations, ``||X_j||_2 = sqrt(sum_t x_tj^2)``."""
        return self.sum_squares.sqrt()


class GramStats:
    """The Gram matrix ``G = X^T X`` of a module's inputs (rows of ``X`` = observations), their per-feature
    sums ``X^T 1`` and the count, float64 whatever the activation dtype: what the compensated removal error
    (``importance.compensated``) and the reconstruction's ridge fits need."""

    def __init__(self, features: int, device: torch.device | str | None = None):
        self.features = features
        self.count = 0
        self.gram = torch.zeros(features, features, dtype=torch.float64, device=device)
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)

    def take_gram(self) -> torch.Tensor:
        """Hand the Gram to a consumer that overwrites it: this object keeps no reference (``gram`` becomes
        None; the sums and count stay), so the consumer can free the d^2 float64 block as soon as it is done."""
        gram, self.gram = self.gram, None
        return gram

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        rows = _observations(x, self.features, self.gram.device)
        self.gram.addmm_(rows.T, rows)
        self.sum += rows.sum(dim=0)
        self.count += rows.shape[0]


@dataclass
class LayerInputs:
    """What the decoder layers receive: hidden states per batch, and keyword arguments per layer and batch."""

    hidden: list[torch.Tensor]
    kwargs: list[list[dict]]  # [layer][batch]


@dataclass
class LayerwiseResult:
    results: dict[int, Any] = field(default_factory=dict)  # what ``process`` returned, per processed layer
    hidden: list[torch.Tensor] = field(default_factory=list)  # outputs of the last layer run, per batch


class _StopForward(Exception):
    """Raised by the last pass-through: the rest of the model is not needed."""


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _layer_output(output) -> torch.Tensor:
    """transformers >= 4.54 decoder layers return the hidden states; older ones a tuple starting with them."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, adapter: ModelAdapter, samples: torch.Tensor, batch_size: int,
                         device: torch.device | None = None) -> LayerInputs:
    """Run the model's embedding part on ``samples`` [N, L] and record every decoder layer's inputs."""
    layers = adapter.decoder_layers()
    first_device = input_device(model)
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]
    cache: dict[int, torch.Tensor] = {}  # one device copy of each distinct tensor (masks are shared)

    def moved(value):
        if device is None:
            return value
        if isinstance(value, torch.Tensor):
            if id(value) not in cache:
                cache[id(value)] = value.to(device)
            return cache[id(value)]
        if isinstance(value, (tuple, list)):
            return type(value)(moved(v) for v in value)
        return value

    saved = [layer.__dict__.get("forward") for layer in layers]  # accelerate hooks live there
    returns_tuple: list[bool] = []  # whether the layers return (hidden_states, ...) or a bare tensor

    def pass_through(index: int):
        def forward(*args, **call_kwargs):
            if not returns_tuple:  # one real call of the first layer tells how the model unpacks its layers
                original = saved[0] or type(layers[0]).forward.__get__(layers[0])
                returns_tuple.append(isinstance(original(*args, **call_kwargs), tuple))
            hidden_states = args[0] if args else call_kwargs.pop("hidden_states")
            if index == 0:
                hidden.append(moved(hidden_states))
            kwargs[index].append({k: moved(v) for k, v in call_kwargs.items()})
            if index == len(layers) - 1:
                raise _StopForward
            return (hidden_states,) if returns_tuple[0] else hidden_states

        return forward

    for index, layer in enumerate(layers):
        layer.forward = pass_through(index)
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size].to(first_device)
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
            cache.clear()
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = forward
    if len(hidden) == 0 or any(len(k) != len(hidden) for k in kwargs):
        raise HywiaError(f"{type(model).__name__} did not call its decoder layers in order; layer-wise calibration "
                         "cannot capture their inputs")
    return LayerInputs(hidden, kwargs)


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    adapter: ModelAdapter,
    samples: torch.Tensor,
    process: Callable[[int, nn.Module, dict[str, RunningStats]], Any],
    *,
    layers: list[int] | None = None,
    observe: Callable[[int], dict[str, str]] | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    offload: bool = False,
    progress: bool = True,
    statistics: Callable[[int, torch.device], Any] = RunningStats,
) -> LayerwiseResult:
    """Calibrate layer by layer on ``samples`` [N, L] of token ids.

    For every decoder layer up to the last of ``layers`` (default: all), the modules named by
    ``observe(layer)`` (``{name: dotted path below the model}``) get their *inputs* accumulated in a
    :class:`RunningStats` each; for layers in ``layers`` the statistics are then given to
    ``process(layer, module, stats)``, whose return value is recorded (``statistics(features, device)``
    makes the accumulators: :class:`RunningStats` by default, :class:`GramStats` for full Gram matrices). The layer's outputs on the
    calibration batches become the next layer's inputs (the dense outputs: changes ``process`` makes to
    the layer do not change what was passed on).

    Placement: without ``offload`` each layer runs where it lives (inputs follow it, so models spread
    over several devices work) and ``device`` only says where the captured inputs are kept; with
    ``offload`` each layer is moved to ``device`` (default: the embedding's device), processed there,
    and moved back. The final outputs are returned in ``LayerwiseResult.hidden``.
    """
    if samples is None or samples.ndim != 2 or len(samples) == 0:
        raise HywiaError("layer-wise calibration needs calibration token ids of shape [N, L]")
    if batch_size < 1:
        raise HywiaError(f"--batch-size must be a positive integer, got {batch_size}")
    wanted = sorted(set(range(adapter.num_layers) if layers is None else layers))
    decoder_layers = adapter.decoder_layers()
    target = torch.device(device) if device is not None else input_device(model)
    inputs = capture_layer_inputs(model, adapter, samples, batch_size, device=target)
    hidden = inputs.hidden
    result = LayerwiseResult()
    bar = tqdm(range(wanted[-1] + 1), desc="layer-wise calibration", unit="layer", disable=not progress, leave=False)
    for index in bar:
        layer = decoder_layers[index]
        layer_home = next(layer.parameters()).device
        if offload:
            layer.to(target)
        run_device = target if offload else layer_home  # without offload a layer runs where it lives
        hidden = [h.to(run_device) for h in hidden]
        kwargs = [_to_device(kw, run_device) for kw in inputs.kwargs[index]]
        stats: dict[str, RunningStats] = {}
        handles = []
        if index in wanted and observe is not None:
            for name, path in observe(index).items():
                module = model.get_submodule(path)
                stats[name] = statistics(module.weight.shape[-1], run_device)
                handles.append(module.register_forward_pre_hook(
                    lambda _module, args, _stats=stats[name]: _stats.add_batch(args[0])))
        try:
            outputs = [_layer_output(layer(h, **kw)) for h, kw in zip(hidden, kwargs)]
        finally:
            for handle in handles:
                handle.remove()
        if index in wanted:
            result.results[index] = process(index, layer, stats)
        if offload:
            layer.to(layer_home)
        hidden = outputs
        inputs.kwargs[index] = kwargs = []  # free this layer's masks / rotary tables unless shared
    result.hidden = hidden
    return result
