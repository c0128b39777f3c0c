"""The layer-by-layer engine: batched statistics, and the same outputs as the whole-model forward."""

import pytest
import torch

from tiny_models import KINDS, build_tiny, token_ids
from hywia.models.adapters import get_adapter
from hywia.errors import HywiaError
from hywia.models.groups import ATTN, MLP
from hywia.calibration.layerwise import RunningStats, run_layerwise


@pytest.mark.parametrize("splits", [[37], [1, 36], [5, 5, 5, 22], [10, 1, 1, 25]])
def test_batched_statistics_equal_one_pass(splits):
    x = torch.randn(37, 6, generator=torch.Generator().manual_seed(0)) * 3 + 5
    stats = RunningStats(6)
    for chunk in torch.split(x, splits):
        stats.add_batch(chunk.reshape(1, -1, 6))  # leading dims are flattened
    x64 = x.double()
    assert stats.count == 37
    torch.testing.assert_close(stats.mean, x64.mean(0))
    torch.testing.assert_close(stats.variance(), x64.var(0, unbiased=True))
    torch.testing.assert_close(stats.variance(unbiased=False), x64.var(0, unbiased=False))
    torch.testing.assert_close(stats.l2_norm(), x64.norm(dim=0))


def test_statistics_reject_wrong_width():
    with pytest.raises(HywiaError):
        RunningStats(4).add_batch(torch.zeros(2, 5))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_layerwise_outputs_match_whole_model(kind, attn):
    if kind == "gemma2" and attn == "sdpa":
        pytest.skip("transformers has no SDPA attention for Gemma 2 (logit soft-capping): eager only")
    model = build_tiny(kind, attn=attn)
    adapter = get_adapter(model)
    ids = token_ids(5, 12, seed=4)
    run = run_layerwise(model, adapter, ids, lambda layer, module, stats: {k: s.count for k, s in stats.items()},
                        observe=lambda layer: {k: adapter.unit_output_module(layer, k) for k in (ATTN, MLP)},
                        batch_size=2, progress=False)
    with torch.no_grad():
        dense = model(ids, output_hidden_states=True)
    final = torch.cat(run.hidden)
    # transformers 5 records each decoder layer's output, the last one after the final norm
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(final), dense.hidden_states[-1], atol=1e-5, rtol=1e-5)
    assert run.results == {layer: {ATTN: 60, MLP: 60} for layer in range(adapter.num_layers)}


def test_layerwise_stops_after_last_requested_layer_and_offloads():
    model = build_tiny("llama-mha")
    adapter = get_adapter(model)
    ids = token_ids(3, 10, seed=5)
    run = run_layerwise(model, adapter, ids, lambda layer, module, stats: next(module.parameters()).device.type,
                        layers=[1], batch_size=3, device="cpu", offload=True, progress=False)
    assert run.results == {1: "cpu"}
    with torch.no_grad():
        dense = model(ids, output_hidden_states=True)
    torch.testing.assert_close(run.hidden[0], dense.hidden_states[2], atol=1e-5, rtol=1e-5)


def test_observed_statistics_match_a_hooked_full_forward():
    model = build_tiny("llama-gqa")
    adapter = get_adapter(model)
    ids = token_ids(4, 9, seed=6)
    path = adapter.unit_output_module(2, MLP)
    captured = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(ids)
    handle.remove()
    inputs = torch.cat(captured).reshape(-1, captured[0].shape[-1]).double()
    run = run_layerwise(model, adapter, ids, lambda layer, module, stats: stats[MLP], layers=[2],
                        observe=lambda layer: {MLP: path}, batch_size=3, progress=False)
    stats = run.results[2]
    torch.testing.assert_close(stats.mean, inputs.mean(0))
    torch.testing.assert_close(stats.variance(), inputs.var(0))


def test_layerwise_rejects_bad_samples():
    model = build_tiny("llama-mha")
    with pytest.raises(HywiaError):
        run_layerwise(model, get_adapter(model), torch.zeros(5, dtype=torch.long), lambda *a: None, progress=False)
