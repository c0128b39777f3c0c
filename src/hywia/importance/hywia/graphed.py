"""The fusion step's forward and backward through the frozen LLM, replayed as CUDA graphs.

A fusion step runs the gated LLM forward and backward; gradients reach only the soft masks. On a 7B model
with 2 x 128 tokens per step the GPU work is a fraction of the ~0.1 s a step takes: the CPU launching the
eager forward's and backward's thousands of kernels dominates. ``torch.cuda.make_graphed_callables``
captures both passes once, with the token ids, the flat masks and the dense logits as static inputs, and
every later step replays them: the same kernels on the same shapes, launched as one graph each.

Only on CUDA, and only when every step has the same inputs: the masks' gradient flows back through the
graphed backward into the fusion parameters as before. A capture that fails (an op that synchronises, a
backend that cannot be captured) falls back to the eager step, and the report says which one ran.
"""

from __future__ import annotations

from typing import Callable

import torch

from .gates import UnitGates


def gated_objective(model, gates: UnitGates, split: Callable, objective: Callable) -> Callable:
    """``step(ids, masks[, dense_logits]) -> loss``: install the flat ``masks`` (views, via ``split``) as the
    gates' masks, then the objective of the gated model."""

    def step(ids: torch.Tensor, masks: torch.Tensor, dense_logits: torch.Tensor | None = None) -> torch.Tensor:
        gates.masks.clear()
        gates.masks.update(split(masks))
        return objective(model, ids, dense_logits)

    return step


def graph_step(step: Callable, sample_args: tuple[torch.Tensor, ...], model) -> tuple[Callable, str]:
    """``step`` captured as CUDA graphs for inputs shaped as ``sample_args`` (the masks among them requiring
    grad), or ``step`` itself when the model is not on one CUDA device or when the capture fails; with a note
    for the report."""
    devices = {p.device for p in model.parameters()} | {t.device for t in sample_args}
    if len(devices) > 1 or next(iter(devices)).type != "cuda":
        return step, "eager" if len(devices) == 1 else "eager (model on several devices)"
    try:
        graphed = torch.cuda.make_graphed_callables(step, sample_args, num_warmup_iters=2)
    except Exception as error:  # a capture failure of any kind: the eager step computes the same loss
        torch.cuda.synchronize()
        lines = str(error).strip().splitlines()
        return step, f"eager (CUDA graph capture failed: {type(error).__name__}: {lines[0][:160] if lines else ''})"
    return graphed, "CUDA graph"
