"""HyWIA's attention fusion of fine- and coarse-grained importance (pure tensors and one nn.Module).

The paper (Liu et al., AAAI 2025) states that an attention mechanism adaptively blends a fine-grained
(per weight, aggregated) and a coarse-grained (whole group) importance, learned end to end; its exact
formulas are not public. This is hywia's reconstruction (METHOD.md section 3):

1. Normalise each granularity within its (layer, kind):   f^_g = f_g / mean(f),  c^_g = c_g / mean(c)
   (or rank percentiles, or z-scores).
2. Context c of WHERE the blend is decided (the query side): depth l / (L - 1), kind, the kept
   fraction, the rank agreement of the two score lists, each list's spread and the share of its score
   mass below the cut; for a per-group blend also the group's own two rank percentiles and their rank
   gap. Query  q = phi(c)  (a small MLP).
3. Descriptors x_j of each granularity j in {fine, coarse} (the key side): its score of the group (log
   of the normalised score), its rank percentile, its spread and cut mass in the layer. Keys
   k_j = psi(x_j) + e_j  with psi linear and e_j a learned granularity embedding.
4. alpha = softmax_j(q . k_j / sqrt(d)),   I_g = alpha_fine f^_g + alpha_coarse c^_g.
5. Soft masks at the target width:  m_g = sigmoid((I_g - t) / (T sigma_I)), t halfway between the
   k-th and (k+1)-th largest I (k = units kept), sigma_I the std of I.

Why the context sits in the query: in a 2-way softmax only k_fine - k_coarse matters, so a feature that
enters both keys through one shared projection cancels; had the context been put into the keys, alpha
would be one global constant. Here q varies with the context and multiplies a key difference that
varies with the granularities' own descriptors, so alpha can differ between layers, kinds and groups.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FINE, COARSE = 0, 1
GRANULARITIES = ("fine", "coarse")
NORMALISATIONS = ("mean", "rank", "zscore")
BLENDS = ("layer", "group")

CONTEXT_NAMES = ("depth", "is_mlp", "keep_fraction", "agreement", "fine_spread", "coarse_spread", "fine_cut_mass",
                 "coarse_cut_mass", "fine_rank", "coarse_rank", "rank_gap")
KEY_NAMES = ("log_score", "rank", "spread", "cut_mass")


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
        return rank_percentile(scores)
    if mode == "zscore":
        return (scores - scores.mean()) / scores.std().clamp_min(1e-30) if len(scores) > 1 else scores * 0
    raise ValueError(f"unknown normalisation {mode!r}; choose one of {NORMALISATIONS}")


def rank_percentile(scores: torch.Tensor) -> torch.Tensor:
    """(rank + 1) / n with rank 0 for the smallest score (ties by position)."""
    ranks = torch.empty_like(scores, dtype=torch.float32)
    ranks[torch.argsort(scores, stable=True)] = torch.arange(len(scores), dtype=torch.float32)
    return (ranks + 1) / len(scores)


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation between two score vectors (1: same order, -1: reversed)."""
    if len(a) < 2:
        return 1.0
    ra, rb = rank_percentile(a), rank_percentile(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).clamp_min(1e-12)
    return float((ra @ rb) / denominator)


def cut_mass(normalised: torch.Tensor, keep: int) -> float:
    """Share of the layer's (non-negative) score mass held by the units below the cut."""
    shifted = normalised - normalised.min()
    total = shifted.sum().clamp_min(1e-12)
    removed = torch.sort(shifted).values[: len(shifted) - keep].sum()
    return float(removed / total)


def _spread(scores: torch.Tensor) -> float:
    """Coefficient of variation of the non-negative-shifted scores (scale-free)."""
    if len(scores) < 2:
        return 0.0
    shifted = scores - scores.min()
    return float(shifted.std() / shifted.mean().clamp_min(1e-12))


def _log_score(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.min() if scores.min() < 0 else scores
    return torch.log(shifted / shifted.mean().clamp_min(1e-30) + 1e-3)


def blend_inputs(fine: torch.Tensor, coarse: torch.Tensor, *, depth: float, is_mlp: bool, keep: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Query context ``[units, len(CONTEXT_NAMES)]`` and key descriptors ``[units, 2, len(KEY_NAMES)]`` of
    one (layer, kind), from its normalised fine and coarse scores. A per-layer blend averages both over
    the units (the per-group columns then hold the layer's mean: 0.5 and 0)."""
    n = len(fine)
    fine_rank, coarse_rank = rank_percentile(fine), rank_percentile(coarse)
    spreads = (_spread(fine), _spread(coarse))
    masses = (cut_mass(fine, keep), cut_mass(coarse, keep))
    layer = torch.tensor([depth, float(is_mlp), keep / max(1, n), rank_agreement(fine, coarse), *spreads, *masses])
    context = torch.cat([layer.expand(n, -1), torch.stack([fine_rank, coarse_rank, fine_rank - coarse_rank], 1)], 1)
    keys = torch.stack([
        torch.stack([_log_score(scores), ranks, torch.full((n,), spread), torch.full((n,), mass)], 1)
        for scores, ranks, spread, mass in ((fine, fine_rank, spreads[0], masses[0]),
                                            (coarse, coarse_rank, spreads[1], masses[1]))
    ], 1)
    return context, keys


class AttentionFusion(nn.Module):
    """alpha = softmax_j(phi(c) . (psi(x_j) + e_j) / sqrt(d)): a context query over the granularities' keys.

    Starts at alpha = (0.5, 0.5) exactly (psi = 0, e = 0); the first gradient step moves the embeddings,
    after which the query learns how the blend should depend on the context.
    """

    def __init__(self, context_features: int = len(CONTEXT_NAMES), key_features: int = len(KEY_NAMES),
                 key_dim: int = 8, hidden: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.query = nn.Sequential(nn.Linear(context_features, hidden), nn.Tanh(), nn.Linear(hidden, key_dim))
        with torch.no_grad():
            for layer in (self.query[0], self.query[2]):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        self.key = nn.Linear(key_features, key_dim, bias=False)
        nn.init.zeros_(self.key.weight)
        self.embedding = nn.Parameter(torch.zeros(len(GRANULARITIES), key_dim))
        self.key_dim = key_dim

    def forward(self, context: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``context`` [..., C], ``keys`` [..., 2, F] -> blend weights alpha [..., 2] (summing to 1)."""
        query = self.query(context)
        projected = self.key(keys) + self.embedding
        logits = (projected @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.key_dim)
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


def soft_masks(scores: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """``soft_mask`` of every row of ``scores`` [G, n] at its own width ``keep`` [G] in one batched call:
    m_g = sigmoid((I_g - t_row) / (T * sigma_row)), t_row halfway between the row's keep-th and (keep+1)-th
    largest score (below the smallest when the row keeps all, above the largest when it keeps none)."""
    rows, n = scores.shape
    keep = keep.to(device=scores.device, dtype=torch.long)
    ordered = torch.sort(scores, dim=1, descending=True).values
    above = ordered.gather(1, (keep - 1).clamp(0, n - 1)[:, None]).squeeze(1)
    below = ordered.gather(1, keep.clamp(0, n - 1)[:, None]).squeeze(1)
    halfway = torch.where(keep <= 0, ordered[:, 0] + 1.0, 0.5 * (above + below))
    threshold = torch.where(keep >= n, ordered[:, -1] - 1.0, halfway)
    spread = scores.std(dim=1).clamp_min(1e-6) if n > 1 else scores.new_ones(rows)
    return torch.sigmoid((scores - threshold[:, None]) / (temperature * spread[:, None]))
