"""Forward-only importance from calibration activations: Wanda-sp and FLAP (An et al., AAAI 2024).

Both look at the *output projection* of a unit: the linear layer whose input columns carry one slice
per unit (``o_proj`` for attention: a KV group owns ``r * head_dim`` contiguous columns, r = query heads
per KV head; ``down_proj`` for the MLP: a channel owns one column). ``W`` is that layer's weight
``[d_out, d_in]`` and ``X`` its input over all calibration tokens ``[T, d_in]``. The functions take
per-column statistics of ``X`` (see ``layerwise.RunningStats``) and return one score per unit; they
know nothing about models.
"""

from __future__ import annotations

import torch


def unit_sums(column_scores: torch.Tensor, num_units: int) -> torch.Tensor:
    """Sum per-column scores over each unit's contiguous block of columns."""
    return column_scores.reshape(num_units, -1).sum(dim=1)


def unit_means(column_scores: torch.Tensor, num_units: int) -> torch.Tensor:
    """Mean of per-column scores over each unit's contiguous block of columns."""
    return column_scores.reshape(num_units, -1).mean(dim=1)


def wanda_sp_importance(weight: torch.Tensor, input_norm: torch.Tensor, num_units: int) -> torch.Tensor:
    """Wanda-sp: Wanda's metric made structured, as in FLAP's baseline code.

    S_ij = |W_ij| * ||X_j||_2 (Wanda's per-weight score; ``input_norm`` = ||X_j||_2 over all tokens),
    averaged over the output rows i and summed over the unit's columns j:

        I_g = sum_{j in cols(g)} (1 / d_out) sum_i |W_ij| * ||X_j||_2

    Only the output projection's input columns are scored (q/k/v and gate/up rows are not).
    """
    column = weight.detach().float().abs().mean(dim=0) * input_norm.to(weight.device).float()
    return unit_sums(column, num_units)


def fluctuation_columns(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation metric (WIFV) per input column j of the output projection:

        S_j = Var_t(X_tj) * ||W_:,j||_2^2

    the sample variance of input channel j over all calibration tokens, times the squared L2 norm of
    the weight column it multiplies: how much the layer's output moves when channel j is replaced by
    its mean (the bias compensation below makes that replacement the whole error).
    """
    return variance.to(weight.device).float() * weight.detach().float().pow(2).sum(dim=0)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """FLAP's standardisation: (S - mean(S)) / std(S), std unbiased, over the given scores.

    FLAP's code applies it to each layer's column scores of one structure type (attention or MLP)
    separately, which makes scores of different layers and types comparable for the global ranking.
    """
    scores = scores.float()
    std = scores.std()
    if not torch.isfinite(std) or std == 0:
        return torch.zeros_like(scores)  # every unit looks the same: no preference
    return (scores - scores.mean()) / std


def flap_importance(weight: torch.Tensor, variance: torch.Tensor, num_units: int, *, attention: bool) -> torch.Tensor:
    """FLAP's unit score (its AL-AM structure, as in the official code):

    * MLP channel j:  I_j = standardize_j(S_j)
    * attention unit: I_g = mean_{j in cols(g)} standardize_j(S_j^2) -- the code squares the attention
      column metric before standardising, then averages the standardised columns of each head (with
      GQA: of the r heads of a KV group).

    Standardisation runs over the columns of this one layer and type (see :func:`standardize`).
    """
    columns = fluctuation_columns(weight, variance)
    if attention:
        return unit_means(standardize(columns.pow(2)), num_units)
    return unit_means(standardize(columns), num_units)


def compensation_bias(weight: torch.Tensor, input_mean: torch.Tensor, removed_columns: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation for removed input columns of ``weight``:

        b' = b + W[:, R] @ mean(X)[R]      (R = removed columns)

    The returned term ``W[:, R] @ mean(X)[R]`` replaces each removed channel by its calibration mean,
    so the pruned layer's output equals the dense one whenever the removed channels are constant.
    """
    removed_columns = removed_columns.to(device=weight.device, dtype=torch.long)
    w = weight.detach().float().index_select(1, removed_columns)
    return w @ input_mean.to(weight.device).float().index_select(0, removed_columns)
