"""One gradient pass over the calibration data, for the prunable tensors only.

g = mean over samples i of grad L_i, where L_i is sample i's mean token loss (the gradient of the mean
calibration loss, as LLM-Pruner computes it); the empirical Fisher diagonal is F = mean over samples of
(grad L_i)^2. Both are means, so the two terms of Element^2 (w*g - 1/2 w*F*w) have matching scales. Accumulators are float32 whatever the model dtype
(in fp16 most of the second-order term underflows). No per-sample copy of the gradients is kept: the
Fisher pass runs one sample at a time and folds each gradient into the two running sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import HywiaError
from ..models.placement import input_device


@dataclass
class GradientStats:
    grad: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor] | None
    num_samples: int


def collect_gradients(
    model: nn.Module,
    tensors: dict[str, nn.Parameter],
    samples: torch.Tensor,
    *,
    with_fisher: bool = False,
    batch_size: int = 1,
    progress: bool = True,
) -> GradientStats:
    """Accumulate g (and F if ``with_fisher``) of ``tensors`` over ``samples`` [N, L] of token ids."""
    was_training = model.training
    saved_flags = {name: p.requires_grad for name, p in model.named_parameters()}
    target_ids = {id(t) for t in tensors.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in target_ids)
    model.eval()
    grad_sum = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in tensors.items()}
    fisher_sum = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in tensors.items()} if with_fisher else None
    step = 1 if with_fisher else max(1, batch_size)
    device = input_device(model)
    try:
        for start in tqdm(range(0, len(samples), step), desc="gradients", disable=not progress, leave=False):
            batch = samples[start : start + step].to(device)
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss * len(batch)
            if not torch.isfinite(loss):
                raise HywiaError(f"the calibration loss is {loss.item()} on samples {start}..{start + len(batch) - 1}; "
                                 "the model produces NaN/inf (try --dtype float32)")
            loss.backward()
            for name, tensor in tensors.items():
                grad = tensor.grad.float()
                if not torch.isfinite(grad).all():
                    raise HywiaError(f"non-finite gradient in {name}; try --dtype float32 or bfloat16")
                grad_sum[name] += grad
                if fisher_sum is not None:
                    fisher_sum[name] += grad * grad
                tensor.grad = None
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved_flags[name])
            p.grad = None
        model.train(was_training)
    for value in grad_sum.values():
        value /= len(samples)
    if fisher_sum is not None:
        for value in fisher_sum.values():
            value /= len(samples)
    return GradientStats(grad_sum, fisher_sum, len(samples))
