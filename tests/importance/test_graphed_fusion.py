"""The fusion step as one callable (``gated_objective``) and its CUDA-graph replay (``graph_step``)."""

import copy

import pytest
import torch

from conftest import build_tiny
from hywia.importance.hywia.gates import gated
from hywia.importance.hywia.graphed import gated_objective, graph_step
from hywia.importance.hywia.method import _objective
from hywia.models.adapters import get_adapter
from hywia.models.groups import MLP


def _setup(device="cpu"):
    model = build_tiny("llama-gqa").to(device)
    adapter = get_adapter(model)
    group_sets = [gs for layer in range(adapter.num_layers) for gs in adapter.group_sets(layer)]
    sizes = [gs.num_units for gs in group_sets]

    def split(flat):
        return dict(zip([gs.key for gs in group_sets], flat.split(sizes)))

    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    return model, adapter, group_sets, sizes, split, ids


def test_gated_objective_equals_the_model_with_the_gated_inputs_zeroed():
    """Masks of 0/1 through the step give the LM loss of a copy whose output projections' gated-off input
    columns are zero (computed on the weights, without hooks)."""
    model, adapter, group_sets, sizes, split, ids = _setup()
    masks = (torch.rand(sum(sizes), generator=torch.Generator().manual_seed(1)) > 0.4).float()
    with gated(model, adapter, group_sets) as gates:
        loss = gated_objective(model, gates, split, _objective)(ids, masks)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for gs, mask in zip(group_sets, masks.split(sizes)):
            weight = zeroed.get_submodule(adapter.unit_output_module(*gs.key)).weight
            per_unit = weight.shape[1] // gs.num_units
            weight.mul_(mask.repeat_interleave(per_unit)[None, :])
            assert gs.key[1] != MLP or per_unit == 1
    expected = zeroed(input_ids=ids, labels=ids, use_cache=False).loss
    torch.testing.assert_close(loss, expected)


def test_graph_step_off_cuda_is_the_eager_step():
    model, adapter, group_sets, sizes, split, ids = _setup()
    with gated(model, adapter, group_sets) as gates:
        step = gated_objective(model, gates, split, _objective)
        same, note = graph_step(step, (ids, torch.ones(sum(sizes), requires_grad=True)), model)
    assert same is step and note == "eager"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_step_gives_the_eager_loss_and_mask_gradient():
    """Replays with new inputs (other ids, other masks) match the eager step's loss and d loss / d masks."""
    model, adapter, group_sets, sizes, split, ids = _setup("cuda")
    generator = torch.Generator().manual_seed(2)
    with gated(model, adapter, group_sets) as gates:
        eager = gated_objective(model, gates, split, _objective)
        graphed, note = graph_step(eager, (ids, torch.rand(sum(sizes), device="cuda", requires_grad=True)), model)
        assert note == "CUDA graph"
        for _ in range(3):
            new_ids = torch.randint(3, 96, ids.shape, generator=generator).cuda()
            logits = torch.randn(sum(sizes), generator=generator).cuda()
            results = []
            for step in (graphed, eager):
                masks = torch.sigmoid(logits.clone().requires_grad_(True))
                loss = step(new_ids, masks)
                (grad,) = torch.autograd.grad(loss, masks)
                results.append((loss.detach().clone(), grad.clone()))
            torch.testing.assert_close(results[0], results[1])
