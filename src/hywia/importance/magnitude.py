"""Magnitude importance: data-free baselines."""

from __future__ import annotations

import torch


def l1_importance(weights: list[torch.Tensor]) -> torch.Tensor:
    """I_g = sum over the group's coupled elements of |w|.

    Each tensor is a unit view ``[num_units, elements_per_unit]`` of one coupled weight.
    """
    return sum(w.float().abs().sum(dim=1) for w in weights)


def l2_importance(weights: list[torch.Tensor]) -> torch.Tensor:
    """I_g = sqrt(sum over the group's coupled elements of w^2) -- the L2 norm of the whole group."""
    return torch.sqrt(sum(w.float().pow(2).sum(dim=1) for w in weights))


def random_importance(num_units: int, generator: torch.Generator) -> torch.Tensor:
    """I_g ~ U(0, 1), drawn from a seeded generator: the floor every method must beat."""
    return torch.rand(num_units, generator=generator)
