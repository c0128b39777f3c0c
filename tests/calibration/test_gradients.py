"""Streamed gradient statistics against a plain per-sample autograd computation, and their memory bound."""

import gc
import weakref

import pytest
import torch

from conftest import build_tiny
from hywia.calibration.gradients import activation_checkpointing, collect_gradients
from hywia.importance.taylor import element_saliency, elementwise_importance, groupwise_importance, vectorwise_importance
from hywia.importance.weight_methods import prunable_dims, prunable_tensors, taylor_importance
from hywia.models.adapters import get_adapter
from hywia.models.groups import row_view


def all_group_sets(model):
    adapter = get_adapter(model)
    return [gs for layer in range(adapter.num_layers) for gs in adapter.group_sets(layer)]


def reference_scores(model, group_sets, samples):
    """Element^1, Element^2, Vector and group scores from full g = mean_i grad L_i and F = mean_i (grad L_i)^2,
    one plain ``torch.autograd.grad`` per sample, then the row-view formulas of ``taylor``."""
    tensors = prunable_tensors(model, group_sets)
    names = list(tensors)
    per_sample = [torch.autograd.grad(model(input_ids=row[None], labels=row[None]).loss, [tensors[n] for n in names])
                  for row in samples]
    g = {n: torch.stack([grads[i] for grads in per_sample]).double().mean(0) for i, n in enumerate(names)}
    fisher = {n: torch.stack([grads[i] for grads in per_sample]).double().pow(2).mean(0) for i, n in enumerate(names)}
    scores = {}
    for gs in group_sets:
        def rows(source, member):
            return row_view(source[f"{member.module}.{member.param}"], member.dim, gs.num_units)

        weights = [rows({n: t.detach().double() for n, t in tensors.items()}, m) for m in gs.members]
        first = [element_saliency(w.double(), rows(g, m)).double() for w, m in zip(weights, gs.members)]
        second = [w * rows(g, m) - 0.5 * w * rows(fisher, m) * w for w, m in zip(weights, gs.members)]
        scores[gs.key] = {"element1": elementwise_importance(first), "element2": elementwise_importance(second),
                          "vector": vectorwise_importance(first), "group": groupwise_importance(first)}
    return scores


def streamed_scores(model, group_sets, samples, **options):
    stats = collect_gradients(model, prunable_tensors(model, group_sets), samples, dims=prunable_dims(group_sets),
                              progress=False, **options)
    scores = {}
    for gs in group_sets:
        scores[gs.key] = {"vector": taylor_importance(gs, stats, "vector"), "group": taylor_importance(gs, stats, "group")}
        if stats.elementwise:
            scores[gs.key]["element1"] = taylor_importance(gs, stats, "element")
        if stats.with_fisher:
            scores[gs.key]["element2"] = taylor_importance(gs, stats, "element", second_order=True)
    return scores, stats


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2"])
@pytest.mark.parametrize("options", [
    dict(batch_size=1, with_fisher=True),
    dict(batch_size=3),  # micro-batches of 3 + 1: g summed over uneven micro-batches
    dict(batch_size=4),  # one micro-batch: no running sum at all
    dict(batch_size=3, elementwise=False),  # linear statistics only, reduced per micro-batch
    dict(batch_size=2, with_fisher=True, checkpointing=True),
])
def test_streamed_scores_equal_full_gradient_scores(kind, options, calib_ids):
    model = build_tiny(kind)
    group_sets = all_group_sets(model)
    expected = reference_scores(model, group_sets, calib_ids)
    got, stats = streamed_scores(model, group_sets, calib_ids, **options)
    assert stats.num_samples == len(calib_ids)
    for key, methods in got.items():
        for method, scores in methods.items():
            torch.testing.assert_close(scores.double(), expected[key][method], rtol=1e-4, atol=1e-9,
                                       msg=f"{key} {method} {options}")


def test_no_full_size_gradient_outlives_its_hook(calib_ids):
    """A probe hook, installed before collect_gradients's own, sees the gradients alive whenever one lands:
    never more than the tensor that just received it. Afterwards every .grad is None and every gradient
    tensor seen has been freed (weak references)."""
    model = build_tiny("llama-gqa")
    group_sets = all_group_sets(model)
    tensors = prunable_tensors(model, group_sets)
    alive, seen = [], []

    def probe(tensor):
        alive.append(sum(p.grad is not None for p in model.parameters()))
        seen.append(weakref.ref(tensor.grad))

    handles = [t.register_post_accumulate_grad_hook(probe) for t in tensors.values()]
    try:
        collect_gradients(model, tensors, calib_ids, dims=prunable_dims(group_sets), batch_size=1, with_fisher=True,
                          progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(tensors) * len(calib_ids)
    assert max(alive) == 1
    assert all(p.grad is None for p in model.parameters())
    gc.collect()
    assert all(ref() is None for ref in seen)


def test_running_sums_do_not_grow_with_the_number_of_samples():
    model = build_tiny("llama-mha")
    group_sets = all_group_sets(model)
    tensors = prunable_tensors(model, group_sets)
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    dims = prunable_dims(group_sets)
    samples = torch.randint(0, 96, (8, 12), generator=torch.Generator().manual_seed(3))

    def peak(count, **options):
        return collect_gradients(model, tensors, samples[:count], dims=dims, progress=False, **options).peak_buffer_bytes

    assert peak(2, batch_size=1) == peak(8, batch_size=1) == weight_bytes  # g's running sum, float32
    assert peak(2, with_fisher=True) == peak(8, with_fisher=True) == 2 * weight_bytes  # g and F
    assert peak(8, batch_size=8) == 0  # one micro-batch: the gradient itself is g's sum
    assert peak(8, batch_size=1, elementwise=False) == 0  # Vector / group: per-slice sums only


def test_model_dtype_accumulator_halves_the_running_sum_of_a_bfloat16_model_and_keeps_the_ranking():
    """bfloat16 running sums (``accumulator="model"``) against float32 ones on the same bfloat16 model: half
    the buffer, unit scores within a few 1e-3 and the same ranking (the float32-model scores differ more)."""
    model = build_tiny("llama-mha").to(torch.bfloat16)
    group_sets = all_group_sets(model)
    tensors = prunable_tensors(model, group_sets)
    samples = torch.randint(0, 96, (16, 16), generator=torch.Generator().manual_seed(4))
    wide, wide_stats = streamed_scores(model, group_sets, samples, batch_size=1, with_fisher=True)
    narrow, narrow_stats = streamed_scores(model, group_sets, samples, batch_size=1, with_fisher=True,
                                           accumulator="model")
    assert narrow_stats.peak_buffer_bytes * 2 == wide_stats.peak_buffer_bytes
    assert wide_stats.peak_buffer_bytes == 2 * 2 * sum(t.numel() * t.element_size() for t in tensors.values())
    for key in wide:
        for method in ("element1", "element2"):
            a, b = wide[key][method], narrow[key][method]
            assert ((a - b).abs() / a.abs()).max() < 1e-2, (key, method)
        for method in ("vector", "group"):  # reduced per micro-batch: the running sums' rounding never reaches them
            torch.testing.assert_close(narrow[key][method], wide[key][method], rtol=1e-4, atol=1e-9)


def test_checkpointing_touches_only_the_layer_modules_and_restores_them():
    model = build_tiny("llama-gqa")
    before = {name: (m.training, getattr(m, "gradient_checkpointing", None)) for name, m in model.named_modules()}
    with activation_checkpointing(model, True) as enabled:
        assert enabled
        layer = model.model.layers[0]
        assert layer.training and layer.gradient_checkpointing and not layer.self_attn.training
    assert {name: (m.training, getattr(m, "gradient_checkpointing", None)) for name, m in model.named_modules()} == before
    assert all("_gradient_checkpointing_func" not in m.__dict__ for m in model.modules())


def test_chunked_passes_give_the_same_statistics_within_the_buffer_budget(calib_ids):
    """A budget smaller than the running sums splits the tensors into several calibration passes: the
    scores equal the one-pass reference (full gradients, computed independently), the running sums never
    exceed the budget when every tensor fits in it, and the tensors' requires_grad flags come back."""
    model = build_tiny("llama-gqa")
    group_sets = all_group_sets(model)
    tensors = prunable_tensors(model, group_sets)
    largest = max(t.numel() * 4 for t in tensors.values())
    expected = reference_scores(model, group_sets, calib_ids)
    for options in (dict(batch_size=2), dict(batch_size=1, with_fisher=True)):
        budget = 2 * largest if options.get("with_fisher") else largest
        got, stats = streamed_scores(model, group_sets, calib_ids, buffer_budget=budget, **options)
        assert stats.passes > 2 and stats.peak_buffer_bytes <= budget, (options, stats.passes)
        for key, methods in got.items():
            for method, scores in methods.items():
                torch.testing.assert_close(scores.double(), expected[key][method], rtol=1e-4, atol=1e-9,
                                           msg=f"{key} {method} {options}")
    assert all(p.requires_grad for p in model.parameters())


def test_one_micro_batch_needs_one_pass_and_no_buffer_whatever_the_budget(calib_ids):
    model = build_tiny("llama-gqa")
    group_sets = all_group_sets(model)
    stats = collect_gradients(model, prunable_tensors(model, group_sets), calib_ids, dims=prunable_dims(group_sets),
                              batch_size=len(calib_ids), buffer_budget=1, progress=False)
    assert (stats.passes, stats.peak_buffer_bytes, stats.micro_batch) == (1, 0, len(calib_ids))


def test_auto_micro_batch_follows_the_activation_share():
    from hywia.calibration import gradients

    model = build_tiny("llama-gqa")
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    per_token = config.vocab_size * 16 + (config.hidden_size * config.num_hidden_layers
                                          + 4 * config.intermediate_size + 8 * config.hidden_size) * 4
    expected = int(max(gradients.BUDGET_FLOOR, gradients.ACTIVATION_SHARE * weight_bytes) // (per_token * 4))
    assert gradients.auto_micro_batch(model, 4, 10**9) == max(1, expected)
    assert gradients.auto_micro_batch(model, 4, 1) == 1
    assert gradients.auto_micro_batch(model, 10**9, 50, floor=3) == 3
    monkey = pytest.MonkeyPatch()
    monkey.setattr(gradients, "BUDGET_FLOOR", 0)
    try:
        assert gradients.auto_micro_batch(model, 4, 10**9) == max(1, int(gradients.ACTIVATION_SHARE * weight_bytes
                                                                         // (per_token * 4)))
    finally:
        monkey.undo()
