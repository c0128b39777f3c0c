"""Taylor importance (LLM-Pruner): the loss change estimated from gradients.

For a weight element w with calibration-loss gradient g and empirical Fisher diagonal F:

* first order (Element^1):  s = w * g
* second order (Element^2): s = w * g - 1/2 * w * F * w

A group's importance then comes at two granularities:

* fine-grained, element-wise: I_g = sum_{e in g} |s_e|
* coarse-grained, vector-wise: I_g = |sum_{e in g} s_e|, the first-order estimate of the loss change
  when the whole group is removed at once.

All functions take unit views ``[num_units, elements_per_unit]`` (see ``groups.unit_view``), one per
coupled tensor, and return one score per unit. Coupled tensors' contributions are summed.
"""

from __future__ import annotations

import torch


def element_saliency(weight: torch.Tensor, grad: torch.Tensor, fisher: torch.Tensor | None = None) -> torch.Tensor:
    """s = w*g (first order), or s = w*g - 1/2 * w*F*w when the Fisher diagonal ``fisher`` is given."""
    weight, grad = weight.float(), grad.float()
    saliency = weight * grad
    if fisher is not None:
        saliency = saliency - 0.5 * weight * fisher.float() * weight
    return saliency


def elementwise_importance(saliencies: list[torch.Tensor]) -> torch.Tensor:
    """Fine-grained: I_g = sum over all coupled elements of |s|."""
    return sum(s.abs().sum(dim=1) for s in saliencies)


def vectorwise_importance(saliencies: list[torch.Tensor]) -> torch.Tensor:
    """Coarse-grained: I_g = |sum over all coupled elements of s| (the whole group removed at once)."""
    return sum(s.sum(dim=1) for s in saliencies).abs()
