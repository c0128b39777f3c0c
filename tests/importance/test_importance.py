"""The importance formulas against hand computations and brute forces."""

import pytest
import torch

from conftest import build_tiny
from hywia.calibration.gradients import collect_gradients
from hywia.importance.magnitude import l1_importance, l2_importance, random_importance
from hywia.importance.taylor import element_saliency, elementwise_importance, groupwise_importance, vectorwise_importance
from hywia.importance.weight_methods import prunable_dims, prunable_tensors, taylor_importance
from hywia.models.adapters import get_adapter


def test_first_and_second_order_saliency_are_the_loss_change_of_removing_a_weight():
    """On a quadratic loss L(w) = sum(c w + h w^2 / 2) the second-order Taylor expansion is exact: removing
    weight i (w_i -> 0) changes L by exactly -(g_i w_i - h_i w_i^2 / 2), with g the gradient and h the
    Hessian diagonal (what the Fisher stands for). On a linear loss (h = 0) the first order is exact.
    The loss change is computed by evaluating L, not from the formula."""
    generator = torch.Generator().manual_seed(0)
    w, c = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    h = torch.rand(3, 4, generator=generator) * 3

    def loss(weights, curvature):
        return (c * weights + 0.5 * curvature * weights ** 2).sum()

    for curvature, second_order in ((torch.zeros_like(h), False), (h, True)):
        g = c + curvature * w  # dL/dw
        change = torch.empty_like(w)
        for index in range(w.numel()):
            removed = w.clone().view(-1)
            removed[index] = 0
            change.view(-1)[index] = loss(removed.view_as(w), curvature) - loss(w, curvature)
        saliency = element_saliency(w, g, curvature) if second_order else element_saliency(w, g)
        torch.testing.assert_close(saliency, -change, atol=1e-5, rtol=1e-5)


def test_three_granularities_on_a_hand_example():
    # one unit, two rows of two elements: row sums +1 -1 = 0 and 2 + 2 = 4; second member: one row -3
    a = torch.tensor([[[1.0, -1.0], [2.0, 2.0]]])
    b = torch.tensor([[[-3.0]]])
    assert elementwise_importance([a, b]).item() == 1 + 1 + 2 + 2 + 3
    assert vectorwise_importance([a, b]).item() == 0 + 4 + 3
    assert groupwise_importance([a, b]).item() == abs(0 + 4 - 3)


def test_vector_is_llm_pruners_row_rule_on_a_real_group(calib_ids):
    """LLM-Pruner's Vector computed by hand from q/k/v/o rows and columns of one KV group, with g from plain
    autograd (the gradient of the mean of the per-sample losses)."""
    model = build_tiny("llama-gqa")
    adapter = get_adapter(model)
    attn = adapter.group_sets(1)[0]
    tensors = prunable_tensors(model, [attn])
    stats = collect_gradients(model, tensors, calib_ids, dims=prunable_dims([attn]), elementwise=False, progress=False)
    losses = torch.stack([model(input_ids=row[None], labels=row[None]).loss for row in calib_ids])
    grads = dict(zip(tensors, torch.autograd.grad(losses.mean(), list(tensors.values()))))
    layer = model.model.layers[1].self_attn
    r, head_dim = adapter.heads_per_kv(1), adapter.head_dim
    unit = 1
    expected = 0.0
    for name, rows in (("q_proj", range(unit * r * head_dim, (unit + 1) * r * head_dim)),
                       ("k_proj", range(unit * head_dim, (unit + 1) * head_dim)),
                       ("v_proj", range(unit * head_dim, (unit + 1) * head_dim))):
        w = getattr(layer, name).weight
        g = grads[f"model.layers.1.self_attn.{name}.weight"]
        expected += sum(abs((w[i] * g[i]).sum().item()) for i in rows)
    w, g = layer.o_proj.weight, grads["model.layers.1.self_attn.o_proj.weight"]
    expected += sum(abs((w[:, j] * g[:, j]).sum().item()) for j in range(unit * r * head_dim, (unit + 1) * r * head_dim))
    got = taylor_importance(attn, stats, "vector")[unit].item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_magnitude_and_random():
    w = [torch.tensor([[3.0, -4.0], [0.0, 1.0]])]
    torch.testing.assert_close(l1_importance(w), torch.tensor([7.0, 1.0]))
    torch.testing.assert_close(l2_importance(w), torch.tensor([5.0, 1.0]))
    a = random_importance(5, torch.Generator().manual_seed(1))
    b = random_importance(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
