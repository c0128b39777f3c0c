"""A physically pruned model computes exactly what the dense model computes with those units zeroed."""

import pytest
import torch

from conftest import build_tiny
from tiny_models import zero_removed
from hywia.models.adapters import get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.models import count_parameters
from hywia.models.surgery import apply_keep


def random_keep(adapter, counts, seed):
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in range(adapter.num_layers):
        for gs in adapter.group_sets(layer):
            count = counts(layer, gs)
            keep[gs.key] = torch.randperm(gs.num_units, generator=generator)[:count]
    return keep


@pytest.mark.parametrize("uniform", [True, False])
def test_pruned_equals_masked_dense(tiny_kind, probe_ids, uniform):
    pruned, reference = build_tiny(tiny_kind), build_tiny(tiny_kind)
    adapter = get_adapter(pruned)

    def counts(layer, gs):
        if gs.kind == ATTN:
            return max(1, gs.num_units - (1 if uniform else layer % 2 + 1))
        return gs.num_units - (13 if uniform else 5 + 7 * layer)

    keep = random_keep(adapter, counts, seed=3)
    zero_removed(reference, get_adapter(reference), keep)
    widths = apply_keep(pruned, adapter, keep)
    assert (len(set(widths)) == 1) == uniform
    with torch.no_grad():
        expected = reference(probe_ids).logits
        actual = pruned(probe_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    for layer, w in enumerate(widths):
        assert w.num_kv_heads == len(keep[(layer, ATTN)])
        assert w.intermediate_size == len(keep[(layer, MLP)])


def test_keeping_every_unit_changes_nothing(tiny_kind, probe_ids):
    model, reference = build_tiny(tiny_kind), build_tiny(tiny_kind)
    adapter = get_adapter(model)
    keep = random_keep(adapter, lambda layer, gs: gs.num_units, seed=0)
    apply_keep(model, adapter, keep)
    assert count_parameters(model) == count_parameters(reference)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(probe_ids).logits, reference(probe_ids).logits, atol=0, rtol=0)


def test_gqa_group_keeps_its_query_heads():
    """Removing KV head 1 of 3 removes query heads 2 and 3 (transformers' layout: head i reads KV i // r)."""
    model = build_tiny("llama-gqa")
    adapter = get_adapter(model)
    q_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    apply_keep(model, adapter, {(0, ATTN): torch.tensor([0, 2])})
    q_after = model.model.layers[0].self_attn.q_proj.weight
    head_dim = adapter.head_dim
    expected = torch.cat([q_before[0 : 2 * head_dim], q_before[4 * head_dim : 6 * head_dim]])
    torch.testing.assert_close(q_after, expected)
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
