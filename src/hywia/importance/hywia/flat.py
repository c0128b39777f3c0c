"""Every group set's normalised scores in one flat vector on the fusion's device, ordered by unit count so
that the group sets of one width form one [G, n] block: a fusion step is then a handful of batched kernels
(blend, fuse, one sort and soft mask per width) instead of a few kernels per group set on the CPU, which at
a 7B model's 64 group sets and 350k units dominated the step (``bench/fusion_step.py``)."""

from __future__ import annotations

from itertools import groupby

import torch

from ..registry import Scores
from .fusion import COARSE, FINE, soft_masks


class FlatScores:
    """Fine and coarse scores of ``keys`` concatenated (width-major order) on ``device``."""

    def __init__(self, keys: list, fine: Scores, coarse: Scores, device: torch.device):
        self.keys = sorted(keys, key=lambda k: (len(fine[k]), k))
        self.sizes = [len(fine[k]) for k in self.keys]
        self.fine = torch.cat([fine[k].float() for k in self.keys]).to(device)
        self.coarse = torch.cat([coarse[k].float() for k in self.keys]).to(device)
        self.blocks = []  # (first key index, group sets, units each)
        first = 0
        for width, same in groupby(self.sizes):
            count = len(list(same))
            self.blocks.append((first, count, width))
            first += count
        self._per_key = torch.tensor(self.sizes, device=device)

    def expand(self, alpha: torch.Tensor) -> torch.Tensor:
        """Blend weights per unit [units, 2] from one row per group set [keys, 2] (a per-layer blend)."""
        return alpha.repeat_interleave(self._per_key, dim=0)

    def fuse(self, alpha: torch.Tensor) -> torch.Tensor:
        """I = alpha_fine f^ + alpha_coarse c^ for every unit; ``alpha`` is [units, 2] or [2]."""
        return alpha[..., FINE] * self.fine + alpha[..., COARSE] * self.coarse

    def split(self, flat: torch.Tensor) -> dict:
        """The per-group-set views of a flat vector (or of a [units, ...] tensor)."""
        return dict(zip(self.keys, flat.split(self.sizes)))

    def soft_masks(self, fused: torch.Tensor, keep: dict, temperature: float) -> torch.Tensor:
        """The soft masks of every group set at its width ``keep[key]``, flat (``fusion.soft_masks`` per width)."""
        counts = torch.tensor([keep[k] for k in self.keys]).to(fused.device, non_blocking=True)
        parts, offset = [], 0
        for first, count, width in self.blocks:
            block = fused[offset : offset + count * width].view(count, width)
            parts.append(soft_masks(block, counts[first : first + count], temperature).reshape(-1))
            offset += count * width
        return torch.cat(parts)
