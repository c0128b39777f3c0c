"""Perplexity over non-overlapping windows (the LLM-Pruner / FLAP convention: 128 tokens)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.texts import prepend_bos
from ..errors import HywiaError
from ..models.placement import input_device


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    window: int
    windows: int
    tokens_scored: int
    text: str
    bos_per_window: bool = False  # each window was BOS + (window - 1) text tokens

    def to_dict(self) -> dict:
        return asdict(self)


def split_windows(ids: torch.Tensor, window: int) -> torch.Tensor:
    """Cut 1-D ``ids`` into ``len(ids) // window`` non-overlapping windows; the ragged tail is dropped."""
    if window < 2:
        raise HywiaError(f"--window must be at least 2 tokens, got {window}")
    count = len(ids) // window
    if count == 0:
        raise HywiaError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {window}")
    return ids[: count * window].view(count, window)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    window: int = 128,
    batch_size: int = 8,
    text_name: str = "",
    progress: bool = True,
    bos_id: int | None = None,
) -> PerplexityResult:
    """exp(mean token NLL), every window scored on its own (window - 1 predicted tokens each).

    With ``bos_id`` every window is BOS followed by ``window - 1`` text tokens (models that need BOS,
    e.g. Gemma); still ``window - 1`` predictions per window.
    """
    windows = prepend_bos(split_windows(ids, window - 1 if bos_id is not None else window), bos_id)
    device = input_device(model)
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=f"perplexity ({window}-token windows)",
                      disable=not progress, leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:].to(logits.device)  # over several GPUs the logits come out on the last one
        nll = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += targets.numel()
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise HywiaError("perplexity is not finite: the model produces NaN/inf logits (try --dtype float32)")
    return PerplexityResult(math.exp(mean_nll), mean_nll, window, len(windows), total_tokens, text_name,
                            bos_id is not None)
