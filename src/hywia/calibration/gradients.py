"""One gradient pass over the calibration data, reduced to per-slice sums as each gradient arrives.

g = mean over samples i of grad L_i, where L_i is sample i's mean token loss (the gradient of the mean
calibration loss, as LLM-Pruner computes it); the empirical Fisher diagonal is F = mean over samples of
(grad L_i)^2. Both are means, so the two terms of Element^2 (s2 = w*g - 1/2 w*F*w) have matching scales.

Every Taylor score needs, per prunable tensor, only sums over its *slices* along the unit dimension
``dim`` (slice j = index j along ``dim``: a weight row for ``dim=0``, a column for ``dim=1``):

* ``total[j]``     = sum_{e in slice j} s_e          (Vector, group-wise / HyWIA's coarse score)
* ``magnitude[j]`` = sum_{e in slice j} |s_e|        (Element, HyWIA's fine score)

with s = w*g (first order) and also s2 (second order, with the Fisher). ``total`` is linear in g and the
second-order term sum w*F*w linear in F, so without ``magnitude`` they are summed micro-batch by
micro-batch (float64): no full-size buffer at all. ``magnitude`` takes |.| of every element of the FULL g
(and F), so it needs their sums over the whole calibration set first (running sums, below); it is reduced
in the hook of the last micro-batch, and ``total`` with it -- or, when the running sums are narrower than
float32, still micro-batch by micro-batch, so that Vector / group scores never see their rounding.

Memory (W = bytes of the prunable weights in the model dtype; activations aside). A hook
(``register_post_accumulate_grad_hook``) takes each weight's gradient as soon as autograd has written it
and sets ``.grad`` to None, so at most one tensor's ``.grad`` is alive at a time:

* Vector / group only: per-slice float64 vectors (a few MB on a 7B model), whatever the number of samples.
* Element^1: one running sum of g per tensor, in the ``accumulator`` dtype (float32: 2W for a bf16 model,
  W for a float32 one; ``model``: W); none when the calibration set fits in one micro-batch.
* Element^2: per-sample backward passes (F needs each sample's gradient); running sums of g and F:
  twice the Element^1 buffer.
The buffers do not grow with the number of samples. The reduction works in float32 chunks of at most
``REDUCE_CHUNK`` elements, so its transient memory is bounded too.

A ``buffer_budget`` (bytes) bounds the running sums: the tensors are split into consecutive chunks whose
buffers fit in it, and the calibration set is passed once per chunk with only that chunk's tensors
requiring gradients (``plan_passes``). Sums are per tensor, so the statistics are the same; the cost is
one extra forward (and a backward that stops at the chunk's first layer) per chunk. On CUDA the scorers
first pick the largest micro-batch whose activations fit in ``ACTIVATION_SHARE`` of the weights
(``auto_micro_batch``): when the whole calibration set fits, there are no running sums at all, else the
budget is ``BUFFER_SHARE`` of the weights (both at least ``BUDGET_FLOOR``), so the peak stays near 1.25x
the weights on a 7B model while a 135M model keeps one pass.

With ``accumulator="model"`` a bfloat16 model's running sums are bfloat16: each addition rounds to 8
mantissa bits (relative 2^-9), about sqrt(K) * 2^-9 per element over K micro-batches; summed over a unit's
elements this averages out: on a tiny bf16 Llama with 64 one-sample micro-batches the Element scores moved
by at most 3.6e-3 (relative), half the 6.9e-3 by which the bf16 model's scores differ from the float32
model's (``tests/calibration/test_gradients.py`` checks < 1e-2). Vector / group scores do not depend on it.

Activation checkpointing (each decoder layer's activations recomputed in the backward) is on by default on
CUDA and off on the CPU; the layers' other modules stay in eval mode (no dropout).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import HywiaError
from ..models.placement import input_device

ACCUMULATORS = ("float32", "model")
REDUCE_CHUNK = 1 << 24  # elements per float32 chunk of a per-slice reduction
ACTIVATION_SHARE = 0.1  # of the model's weight bytes: what one gradient micro-batch may take (``auto_micro_batch``)
BUFFER_SHARE = 0.15  # of the prunable weight bytes: the running sums' budget on CUDA (``plan_passes``)
BUDGET_FLOOR = 1 << 30  # both budgets are at least 1 GiB: small models need no extra passes or tiny micro-batches


@dataclass
class SliceStats:
    """Sums of one tensor's saliency over its slices along ``dim`` (float64, one entry per slice)."""

    dim: int
    total: torch.Tensor  # sum w*g
    magnitude: torch.Tensor | None = None  # sum |w*g| (elementwise statistics only)
    total2: torch.Tensor | None = None  # sum (w*g - 1/2 w*F*w) (with the Fisher)
    magnitude2: torch.Tensor | None = None  # sum |w*g - 1/2 w*F*w|

    def sums(self, absolute: bool, second_order: bool) -> torch.Tensor:
        value = {(False, False): self.total, (True, False): self.magnitude,
                 (False, True): self.total2, (True, True): self.magnitude2}[(absolute, second_order)]
        if value is None:
            need = "the Fisher diagonal (with_fisher=True)" if second_order else "elementwise=True"
            raise HywiaError(f"these gradient statistics lack {'sum |s|' if absolute else 'sum s'}: collect with {need}")
        return value


@dataclass
class GradientStats:
    """What one gradient pass leaves: per-slice sums of every prunable tensor (``weight_methods.taylor_importance``
    turns them into unit scores) and how they were collected."""

    slices: dict[str, SliceStats]
    num_samples: int
    with_fisher: bool
    elementwise: bool
    accumulator: str
    peak_buffer_bytes: int  # the running sums' largest total size during the pass
    checkpointing: bool
    passes: int = 1  # calibration passes (one per chunk of tensors, ``plan_passes``)
    micro_batch: int = 1  # samples per forward/backward


def _slice_sums(weight: torch.Tensor, dim: int, terms) -> dict[str, torch.Tensor]:
    """``terms(w, start, length)`` gives float32 element tensors of one chunk of slices along ``dim``; their
    per-slice sums, in float64, one entry per slice. Chunks hold at most ``REDUCE_CHUNK`` elements."""
    size = weight.shape[dim]
    step = max(1, REDUCE_CHUNK // max(1, weight.numel() // max(1, size)))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, size, step):
        length = min(step, size - start)
        for name, values in terms(weight.narrow(dim, start, length).float(), start, length).items():
            parts.setdefault(name, []).append(values.movedim(dim, 0).reshape(length, -1).sum(dim=1, dtype=torch.float64))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def linear_slice_sums(weight: torch.Tensor, grad: torch.Tensor, dim: int, squares: bool) -> dict[str, torch.Tensor]:
    """One micro-batch's ``total`` = sum w*grad and (``squares``) ``curvature`` = sum w^2*grad^2 per slice:
    linear in the gradient (resp. in F), so summed over micro-batches they give sum w*g and sum w*F*w times N."""
    def terms(w, start, length):
        wg = w * grad.narrow(dim, start, length).float()
        return {"total": wg, "curvature": wg * wg} if squares else {"total": wg}

    return _slice_sums(weight, dim, terms)


def full_slice_sums(weight: torch.Tensor, grad_sum: torch.Tensor, fisher_sum: torch.Tensor | None, dim: int,
                    num_samples: int, linear: bool) -> dict[str, torch.Tensor]:
    """From the sums over all samples of the gradients (and of their squares): ``magnitude`` = sum |w*g| and
    (with ``fisher_sum``) ``magnitude2`` = sum |w*g - 1/2 w*F*w| per slice, g = grad_sum / N, F = fisher_sum / N
    (|.| of each element needs the full sums); with ``linear`` also ``total`` and ``curvature`` as
    ``linear_slice_sums`` gives them summed over the micro-batches (i.e. times N)."""
    def terms(w, start, length):
        wg = w * grad_sum.narrow(dim, start, length).float()
        found = {"magnitude": wg.abs().div_(num_samples)}
        if linear:
            found["total"] = wg
        if fisher_sum is not None:
            curvature = w * fisher_sum.narrow(dim, start, length).float() * w
            found["magnitude2"] = (wg - 0.5 * curvature).abs_().div_(num_samples)
            if linear:
                found["curvature"] = curvature
        return found

    return _slice_sums(weight, dim, terms)


class _Streamer:
    """The post-accumulate-grad hooks: fold each gradient into the running sums or the slice sums, free it."""

    def __init__(self, tensors: dict[str, nn.Parameter], dims: dict[str, int], num_samples: int, *,
                 elementwise: bool, with_fisher: bool, accumulator: str):
        self.tensors, self.dims, self.num_samples = tensors, dims, num_samples
        self.elementwise, self.with_fisher = elementwise or with_fisher, with_fisher
        self.accumulator = accumulator
        self.names = {id(t): name for name, t in tensors.items()}
        self.grad_sums: dict[str, torch.Tensor] = {}
        self.fisher_sums: dict[str, torch.Tensor] = {}
        self.linear: dict[str, dict[str, torch.Tensor]] = {}  # per-slice sums, added up over micro-batches
        self.magnitudes: dict[str, dict[str, torch.Tensor]] = {}  # per-slice sums of |.|, at the last micro-batch
        self.final = False  # set before the backward of the last micro-batch
        self.buffer_bytes = self.peak_buffer_bytes = 0
        self.handles = []

    def install(self) -> None:
        for tensor in self.tensors.values():
            self.handles.append(tensor.register_post_accumulate_grad_hook(self._hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.grad_sums.clear()
        self.fisher_sums.clear()

    def _dtype(self, grad: torch.Tensor) -> torch.dtype:
        return torch.float32 if self.accumulator == "float32" else grad.dtype

    def narrow_buffers(self, grad: torch.Tensor) -> bool:
        return torch.finfo(self._dtype(grad)).bits < 32

    def _add(self, store: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> torch.Tensor:
        if name in store:
            return store[name].add_(value)
        store[name] = value if value.dtype == self._dtype(value) else value.to(self._dtype(value))
        self.buffer_bytes += store[name].numel() * store[name].element_size()
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes)
        return store[name]

    def _release(self, name: str) -> None:
        for store in (self.grad_sums, self.fisher_sums):
            value = store.pop(name, None)
            if value is not None:
                self.buffer_bytes -= value.numel() * value.element_size()

    @torch.no_grad()
    def _hook(self, tensor: torch.Tensor) -> None:
        name = self.names[id(tensor)]
        grad, tensor.grad = tensor.grad, None
        dim, weight = self.dims[name], tensor.detach()
        # Linear sums micro-batch by micro-batch: always without running sums; with them only when these are
        # narrower than float32 (then the sums stay exact while g and F are rounded), else from them at the end.
        if not self.elementwise or self.narrow_buffers(grad):
            for key, value in linear_slice_sums(weight, grad, dim, self.with_fisher).items():
                sums = self.linear.setdefault(name, {})
                sums[key] = sums[key] + value if key in sums else value
        if not self.elementwise:
            return
        fisher = None
        if self.with_fisher:
            squared = grad.float().square() if self._dtype(grad) == torch.float32 else grad * grad
            fisher = self._add(self.fisher_sums, name, squared)
        if self.final and name not in self.grad_sums:  # one micro-batch: this gradient is g's whole sum
            grad_sum = grad
        else:
            grad_sum = self._add(self.grad_sums, name, grad)
        if self.final:
            linear = not self.narrow_buffers(grad)
            found = full_slice_sums(weight, grad_sum, fisher, dim, self.num_samples, linear)
            self.magnitudes[name] = {key: found.pop(key) for key in ("magnitude", "magnitude2") if key in found}
            if linear:
                self.linear[name] = found
            self._release(name)

    def stats(self) -> dict[str, SliceStats]:
        """g = sum / N and F = sum / N: total = sum w*g, total2 = total - 1/2 sum w*F*w (module docstring)."""
        slices = {}
        for name, tensor in self.tensors.items():
            dim = self.dims[name]
            zero = torch.zeros(tensor.shape[dim], dtype=torch.float64, device=tensor.device)  # no gradient: g = 0
            linear = self.linear.get(name, {})
            magnitudes = self.magnitudes.get(name, {})
            total = linear.get("total", zero) / self.num_samples
            stats = SliceStats(dim, total)
            if self.elementwise:
                stats.magnitude = magnitudes.get("magnitude", zero)
            if self.with_fisher:
                stats.total2 = total - 0.5 * linear.get("curvature", zero) / self.num_samples
                stats.magnitude2 = magnitudes.get("magnitude2", zero)
            slices[name] = stats
        for name, stats in slices.items():
            for value in (stats.total, stats.magnitude, stats.total2, stats.magnitude2):
                if value is not None and not torch.isfinite(value).all():
                    raise HywiaError(f"non-finite gradient in {name}; try --dtype float32 or bfloat16")
        return slices


def _checkpointable_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, enabled: bool):
    """Recompute each decoder layer's activations in the backward (non-reentrant ``torch.utils.checkpoint``)
    while inside; every flag touched is restored on exit. Only the layer modules themselves are put in
    training mode (transformers checkpoints a layer only then); their submodules stay in eval (no dropout)."""
    layers = _checkpointable_layers(model) if enabled else []
    saved = [(m, m.training, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func")) for m in layers]
    checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    try:
        for module in layers:
            module.training, module.gradient_checkpointing = True, True
            module._gradient_checkpointing_func = checkpoint
        yield bool(layers)
    finally:
        for module, training, flag, func in saved:
            module.training, module.gradient_checkpointing = training, flag
            if func is None:
                module.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                module._gradient_checkpointing_func = func


def buffer_bytes(tensor: torch.Tensor, accumulator: str, with_fisher: bool) -> int:
    """Bytes of one tensor's running sums: g (and F), in float32 or in the tensor's own dtype."""
    size = 4 if accumulator == "float32" else tensor.element_size()
    return tensor.numel() * size * (2 if with_fisher else 1)


def plan_passes(tensors: dict[str, torch.Tensor], *, needs_sums: bool, accumulator: str, with_fisher: bool,
                budget: int | None) -> list[list[str]]:
    """Consecutive chunks of tensor names whose running sums fit in ``budget`` bytes (a tensor larger than
    the budget gets a chunk of its own); one chunk when no running sums are needed or there is no budget."""
    names = list(tensors)
    if not needs_sums or budget is None:
        return [names]
    chunks, current, used = [], [], 0
    for name in names:
        size = buffer_bytes(tensors[name], accumulator, with_fisher)
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return chunks + [current] if current else chunks


@dataclass(frozen=True)
class ActivationShape:
    """The sizes that set a forward/backward's activation memory per token."""

    vocab: int
    hidden: int
    layers: int
    wide: int  # the MLP's intermediate width
    element: int  # bytes per activation element (the model's dtype)


def activation_shape(model: nn.Module) -> ActivationShape:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = config.hidden_size
    return ActivationShape(config.vocab_size, hidden, config.num_hidden_layers,
                           getattr(config, "intermediate_size", None) or 4 * hidden,
                           next(model.parameters()).element_size())


def auto_micro_batch(model: nn.Module, seq_len: int, num_samples: int, floor: int = 1) -> int:
    """Samples per gradient micro-batch on CUDA: as many as keep one micro-batch's activations (logits and
    their gradient in float32, the checkpointed layer inputs, one layer recomputed) within
    ``ACTIVATION_SHARE`` of the model's weight bytes (or ``BUDGET_FLOOR``); at least ``floor``, at most
    ``num_samples``."""
    shape = activation_shape(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    per_token = shape.vocab * 16 + (shape.hidden * shape.layers + 4 * shape.wide + 8 * shape.hidden) * shape.element
    fits = int(max(BUDGET_FLOOR, ACTIVATION_SHARE * weight_bytes) // (per_token * max(1, seq_len)))
    return max(1, min(num_samples, max(floor, fits)))


def collect_gradients(
    model: nn.Module,
    tensors: dict[str, nn.Parameter],
    samples: torch.Tensor,
    *,
    dims: dict[str, int] | None = None,
    elementwise: bool = True,
    with_fisher: bool = False,
    batch_size: int = 1,
    accumulator: str = "float32",
    checkpointing: bool | None = None,
    buffer_budget: int | None = None,
    progress: bool = True,
) -> GradientStats:
    """Per-slice saliency sums of ``tensors`` (slices along ``dims[name]``, default 0) over ``samples`` [N, L].

    ``elementwise`` adds the sums of |s| (Element scores; needs running sums of g), ``with_fisher`` the
    second-order saliency (one sample per backward). ``checkpointing=None``: on when the model is on CUDA.
    ``buffer_budget``: at most this many bytes of running sums at once (one calibration pass per chunk of
    tensors, ``plan_passes``); None: one pass.
    """
    if accumulator not in ACCUMULATORS:
        raise HywiaError(f"the gradient accumulator must be one of {', '.join(ACCUMULATORS)}, got {accumulator!r}")
    dims = {name: (dims or {}).get(name, 0) for name in tensors}
    device = input_device(model)
    checkpointing = device.type == "cuda" if checkpointing is None else checkpointing
    was_training = model.training
    saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    target_ids = {id(t) for t in tensors.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in target_ids)
        p.grad = None
    model.eval()
    step = 1 if with_fisher else max(1, batch_size)
    starts = range(0, len(samples), step)
    needs_sums = (elementwise or with_fisher) and len(starts) > 1
    passes = plan_passes(tensors, needs_sums=needs_sums, accumulator=accumulator, with_fisher=with_fisher,
                         budget=buffer_budget)
    slices, peak = {}, 0
    try:
        with activation_checkpointing(model, checkpointing) as checkpointed:
            for number, chunk in enumerate(passes, 1):
                chunk_tensors = {name: tensors[name] for name in chunk}
                for name in tensors:
                    tensors[name].requires_grad_(name in chunk_tensors)
                streamer = _Streamer(chunk_tensors, {name: dims[name] for name in chunk}, len(samples),
                                     elementwise=elementwise, with_fisher=with_fisher, accumulator=accumulator)
                label = "gradients" if len(passes) == 1 else f"gradients (pass {number}/{len(passes)})"
                try:
                    streamer.install()
                    for start in tqdm(starts, desc=label, disable=not progress, leave=False):
                        batch = samples[start : start + step].to(device)
                        streamer.final = start == starts[-1]
                        loss = model(input_ids=batch, labels=batch, use_cache=False).loss * len(batch)
                        if not torch.isfinite(loss):
                            raise HywiaError(f"the calibration loss is {loss.item()} on samples {start}..{start + len(batch) - 1}; "
                                             "the model produces NaN/inf (try --dtype float32)")
                        loss.backward()
                        del loss
                    slices.update(streamer.stats())
                    peak = max(peak, streamer.peak_buffer_bytes)
                finally:
                    streamer.remove()
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_flags[name])
            p.grad = None
        model.train(was_training)
    return GradientStats(slices, len(samples), with_fisher, elementwise or with_fisher, accumulator, peak,
                         checkpointed, passes=len(passes), micro_batch=step)

