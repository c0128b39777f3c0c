"""The importance formulas on hand-made tensors."""

import torch

from hywia.importance.magnitude import l1_importance, l2_importance, random_importance
from hywia.importance.taylor import element_saliency, elementwise_importance, vectorwise_importance


def test_first_and_second_order_saliency():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    g = torch.tensor([[0.5, 0.25], [-1.0, 2.0]])
    f = torch.tensor([[2.0, 1.0], [0.0, 4.0]])
    torch.testing.assert_close(element_saliency(w, g), w * g)
    torch.testing.assert_close(element_saliency(w, g, f), w * g - 0.5 * w * f * w)


def test_fine_vs_coarse_aggregation():
    # unit 0: saliencies cancel (coarse 0, fine 2); unit 1: they add up (coarse 2, fine 2)
    s_member_a = torch.tensor([[1.0], [1.0]])
    s_member_b = torch.tensor([[-1.0], [1.0]])
    torch.testing.assert_close(elementwise_importance([s_member_a, s_member_b]), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(vectorwise_importance([s_member_a, s_member_b]), torch.tensor([0.0, 2.0]))


def test_magnitude_and_random():
    w = [torch.tensor([[3.0, -4.0], [0.0, 1.0]])]
    torch.testing.assert_close(l1_importance(w), torch.tensor([7.0, 1.0]))
    torch.testing.assert_close(l2_importance(w), torch.tensor([5.0, 1.0]))
    a = random_importance(5, torch.Generator().manual_seed(1))
    b = random_importance(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
