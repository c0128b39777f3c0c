"""Taylor importance (LLM-Pruner): the loss change estimated from gradients.

For a weight element w, g is the gradient of the MEAN calibration loss (the mean of the per-sample
gradients) and F the empirical Fisher diagonal (the mean of the squared per-sample gradients):

* first order (Element^1):  s = w * g
* second order (Element^2): s = w * g - 1/2 * w * F * w

A group's importance then comes at three granularities:

* element-wise (fine, LLM-Pruner's Element):  I_g = sum_{e in g} |s_e|
* vector-wise (LLM-Pruner's Vector, as its code computes it): for every weight row (q/k/v/gate/up:
  an output row; o/down: an input column) of the group, |sum of s along that row|, summed over the
  group's rows:  I_g = sum_{r in rows(g)} |sum_{e in r} s_e|
* group-wise (coarse, HyWIA's):  I_g = |sum_{e in g} s_e|, the first-order estimate of the loss change
  when the whole group is removed at once.

The functions take *row views* ``[num_units, rows_per_unit, row_length]`` (see
``groups.row_view``), one per coupled tensor, and return one score per unit; coupled tensors'
contributions are summed (``|.|`` of the group-wise score is taken after summing over ALL members).
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


def _per_unit(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(s.shape[0], -1)


def elementwise_importance(saliencies: list[torch.Tensor]) -> torch.Tensor:
    """Fine-grained (Element): I_g = sum over all coupled elements of |s|."""
    return sum(_per_unit(s).abs().sum(dim=1) for s in saliencies)


def vectorwise_importance(saliencies: list[torch.Tensor]) -> torch.Tensor:
    """LLM-Pruner's Vector: I_g = sum over the group's weight rows r of |sum_{e in r} s_e|.

    Each saliency must be a row view ``[units, rows_per_unit, row_length]``.
    """
    return sum(s.sum(dim=2).abs().sum(dim=1) for s in saliencies)


def groupwise_importance(saliencies: list[torch.Tensor]) -> torch.Tensor:
    """Coarse-grained (whole group): I_g = |sum over all coupled elements of s|."""
    return sum(_per_unit(s).sum(dim=1) for s in saliencies).abs()
