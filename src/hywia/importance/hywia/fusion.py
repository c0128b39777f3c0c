"""HyWIA's attention fusion of fine- and coarse-grained importance (pure tensors and one nn.Module).

The paper (Liu et al., AAAI 2025) states that an attention mechanism adaptively blends a fine-grained
(per weight, aggregated) and a coarse-grained (whole group) importance, learned end to end; its exact
formulas are not public. This is hywia's reconstruction (METHOD.md section 3):

1. Normalise each granularity within its (layer, kind):   f^_g = f_g / mean(f),  c^_g = c_g / mean(c)
   (or rank percentiles, or z-scores).
2. For each granularity j in {fine, coarse} build a descriptor x_j of its scores there: the score
   itself (per-group blend), the spread of the layer's scores, the share of score mass below the cut,
   depth l / (L - 1), kind, the rank agreement between the two granularities, and j itself (one-hot).
3. A learned query q attends over the keys k_j = W x_j:   alpha = softmax_j(q . k_j / sqrt(d))
4. Fused importance:                                       I_g = alpha_fine f^_g + alpha_coarse c^_g
5. Soft masks at the target width:                         m_g = sigmoid((I_g - t) / (T sigma_I))
   with t halfway between the k-th and (k+1)-th largest I (k = units kept) and sigma_I the std of I.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FINE, COARSE = 0, 1
GRANULARITIES = ("fine", "coarse")
NORMALISATIONS = ("mean", "rank", "zscore")
BLENDS = ("layer", "group")


def normalise(scores: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Make one layer's scores comparable across granularities.

    mean:   s / mean(s)                 (scale-free, keeps ratios)
    rank:   (rank(s) + 1) / n           (percentile in (0, 1], robust to heavy tails)
    zscore: (s - mean(s)) / std(s)
    """
    scores = scores.float()
    if mode == "mean":
        return scores / scores.mean().clamp_min(1e-30)
    if mode == "rank":
        ranks = torch.empty_like(scores)
        ranks[torch.argsort(scores, stable=True)] = torch.arange(len(scores), dtype=scores.dtype)
        return (ranks + 1) / len(scores)
    if mode == "zscore":
        return (scores - scores.mean()) / scores.std().clamp_min(1e-30) if len(scores) > 1 else scores * 0
    raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORMALISATIONS}")


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation between two score vectors (1: same order, -1: reversed)."""
    if len(a) < 2:
        return 1.0
    ra, rb = normalise(a, "rank"), normalise(b, "rank")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).clamp_min(1e-12)
    return float((ra @ rb) / denominator)


def cut_mass(normalised: torch.Tensor, keep: int) -> float:
    """Share of the layer's (non-negative) score mass held by the units below the cut."""
    shifted = normalised - normalised.min()
    total = shifted.sum().clamp_min(1e-12)
    removed = torch.sort(shifted).values[: len(shifted) - keep].sum()
    return float(removed / total)


DESCRIPTOR_NAMES = ("score", "spread", "cut_mass", "depth", "is_mlp", "agreement", "is_fine", "is_coarse")


def granularity_descriptors(
    fine: torch.Tensor, coarse: torch.Tensor, *, depth: float, is_mlp: bool, keep: int
) -> torch.Tensor:
    """Descriptors x[g, j, :] of granularity j for unit g of one (layer, kind): a [units, 2, 8] tensor.

    ``fine`` and ``coarse`` are already normalised. The per-unit ``score`` column is what lets a
    per-group blend differ between units; the other columns describe the layer.
    """
    agreement = rank_agreement(fine, coarse)
    rows = []
    for j, scores in enumerate((fine, coarse)):
        layer_stats = torch.tensor(
            [scores.std().item() if len(scores) > 1 else 0.0, cut_mass(scores, keep), depth, float(is_mlp),
             agreement, float(j == FINE), float(j == COARSE)]
        )
        rows.append(torch.cat([scores[:, None], layer_stats.expand(len(scores), -1)], dim=1))
    return torch.stack(rows, dim=1)


class AttentionFusion(nn.Module):
    """alpha = softmax_j(q . (W x_j) / sqrt(d)): a learned query attending over the two granularities.

    Starts at alpha = (0.5, 0.5) exactly (W = 0): training moves it only where the loss says so.
    """

    def __init__(self, num_features: int = len(DESCRIPTOR_NAMES), key_dim: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.key = nn.Linear(num_features, key_dim, bias=False)
        nn.init.zeros_(self.key.weight)
        self.query = nn.Parameter(torch.randn(key_dim, generator=generator) / math.sqrt(key_dim))
        self.key_dim = key_dim

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        """``descriptors`` [..., 2, F] -> blend weights alpha [..., 2] (non-negative, summing to 1)."""
        logits = self.key(descriptors) @ self.query / math.sqrt(self.key_dim)
        return torch.softmax(logits, dim=-1)


def fuse(fine: torch.Tensor, coarse: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """I_g = alpha_fine * f^_g + alpha_coarse * c^_g; ``alpha`` is [2] (per layer) or [units, 2]."""
    return alpha[..., FINE] * fine + alpha[..., COARSE] * coarse


def keep_threshold(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """t halfway between the keep-th and (keep+1)-th largest score (differentiable in the scores)."""
    ordered = torch.sort(scores, descending=True).values
    if keep >= len(scores):
        return ordered[-1] - 1.0
    if keep <= 0:
        return ordered[0] + 1.0
    return 0.5 * (ordered[keep - 1] + ordered[keep])


def soft_mask(scores: torch.Tensor, keep: int, temperature: float) -> torch.Tensor:
    """m_g = sigmoid((I_g - t) / (T * sigma_I)): about ``keep`` units near 1, the rest near 0."""
    spread = scores.std().clamp_min(1e-6) if len(scores) > 1 else scores.new_tensor(1.0)
    return torch.sigmoid((scores - keep_threshold(scores, keep)) / (temperature * spread))
