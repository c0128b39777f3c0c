"""The shared adapter suite: every supported family passes the same invariants, each checked against an
independent computation (a dense forward with the removed units zeroed, a state-dict count, hand-derived
ALiBi slopes), never against the code's own output.

Families: Llama (MHA, GQA), Vicuna, Mistral, Qwen2, Qwen3, Gemma 1/2/3, Phi-3 (GQA, MHA), Bloom,
Baichuan-7B and Baichuan-13B (tiny re-creations of their remote code, tests/remote_baichuan).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import count_unique_storage
from tiny_families import FAMILIES, REMOTE, build_family
from tiny_models import zero_removed
from hywia import PruneConfig, load_pruned, prune, save_pruned
from hywia.importance.registry import METHODS
from hywia.models.adapters import alibi, get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.models.surgery import apply_keep

REMOTE_CODE = Path(__file__).parents[1] / "remote_baichuan"
ALIBI_FAMILIES = ("bloom", "baichuan-13b")
PROBE = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
CALIB = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))


def logits(model, ids=PROBE):
    with torch.no_grad():
        return model(ids).logits


def random_keep(adapter, uniform: bool, seed: int = 3) -> dict:
    """Drop one or two KV groups and several MLP channels per layer (the same counts everywhere if uniform)."""
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in range(adapter.num_layers):
        for gs in adapter.group_sets(layer):
            drop = (1 if uniform else 1 + layer % 2) if gs.kind == ATTN else (7 if uniform else 3 + 4 * layer)
            keep[gs.key] = torch.randperm(gs.num_units, generator=generator)[:max(1, gs.num_units - drop)]
    return keep


def save_for_reload(model, folder: Path, kind: str) -> Path:
    """Save like ``hywia prune --out``; a Baichuan folder also gets its modelling code (auto_map), as on the hub."""
    if kind in REMOTE:
        model.config.auto_map = {"AutoConfig": f"configuration_baichuan.{type(model.config).__name__}",
                                 "AutoModelForCausalLM": f"modeling_baichuan.{type(model).__name__}"}
    out = save_pruned(model, None, folder, {})
    if kind in REMOTE:
        for name in ("configuration_baichuan.py", "modeling_baichuan.py"):
            shutil.copy(REMOTE_CODE / name, out / name)
    return out


def reload(out: Path, kind: str):
    return load_pruned(out, trust_remote_code=kind in REMOTE)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "per-layer"])
def test_pruned_equals_masked_dense(family, uniform):
    """Removing units physically == zeroing their output-projection input columns in the dense model
    (attention and MLP; for ALiBi models with every surviving head's original slope)."""
    pruned, reference = build_family(family), build_family(family)
    adapter = get_adapter(pruned)
    keep = random_keep(adapter, uniform)
    zero_removed(reference, get_adapter(reference), keep)
    widths = apply_keep(pruned, adapter, keep)
    assert (len(set(widths)) == 1) == uniform
    for layer, w in enumerate(widths):
        assert w.num_kv_heads == len(keep[(layer, ATTN)]) and w.intermediate_size == len(keep[(layer, MLP)])
    torch.testing.assert_close(logits(pruned), logits(reference), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "per-layer"])
def test_save_reload_identical_logits_and_parameter_count(family, uniform, tmp_path):
    """A stock config (uniform widths where the family allows it) reloads with plain from_pretrained,
    anything else with hywia.load_pruned; either way with the pruned model's exact logits."""
    model = build_family(family)
    apply_keep(model, get_adapter(model), random_keep(get_adapter(model), uniform=uniform))
    stock = not (hasattr(model.config, "hywia_layer_widths") or hasattr(model.config, alibi.HEADS_KEY))
    if family in ("bloom", "baichuan-7b", "baichuan-13b") or not uniform:
        assert not stock  # heads removed: their head count cannot go into a stock config
    out = save_for_reload(model, tmp_path / "out", family)
    if stock:
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=family in REMOTE)
    else:
        reloaded = reload(out, family)
    torch.testing.assert_close(logits(reloaded), logits(model), atol=0, rtol=0)
    assert count_unique_storage(reloaded) == count_unique_storage(model)


def expected_slopes(n: int) -> torch.Tensor:
    """ALiBi slopes written out from the paper's rule (Press et al.): for n a power of two the geometric
    sequence starting at and with ratio 2^(-8/n); otherwise that for the nearest lower power of two p,
    followed by every other term of the sequence for 2p."""
    def geometric(m):
        start = 2.0 ** (-8.0 / m)
        return [start ** (i + 1) for i in range(m)]

    p = 2 ** (n.bit_length() - 1)
    slopes = geometric(p) if p == n else geometric(p) + geometric(2 * p)[0::2][: n - p]
    return torch.tensor(slopes, dtype=torch.float64)


def seen_biases(model, adapter) -> list[torch.Tensor]:
    """The position bias each attention module actually receives (after hywia's selection hook)."""
    seen = []
    argument = "alibi" if type(adapter).__name__ == "BloomAdapter" else "attention_mask"
    handles = [adapter._attn(i).register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs[argument].detach().clone()), with_kwargs=True)
        for i in range(adapter.num_layers)]
    try:
        logits(model, PROBE[:1])
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("kind", ALIBI_FAMILIES)
def test_alibi_heads_keep_their_original_slopes_after_reload(kind, tmp_path):
    """Each layer's surviving heads see slope_original[h] * key position, checked against the slopes
    derived by hand, after pruning and after save -> reload."""
    model = build_family(kind)
    adapter = get_adapter(model)
    total = adapter.total_heads
    keep = random_keep(adapter, uniform=False)
    apply_keep(model, adapter, keep)
    reloaded = reload(save_for_reload(model, tmp_path / "out", kind), kind)
    slopes = expected_slopes(total)
    positions = torch.arange(PROBE.shape[1], dtype=torch.float64)
    for candidate in (model, reloaded):
        for layer, bias in enumerate(seen_biases(candidate, get_adapter(candidate))):
            kept = torch.sort(keep[(layer, ATTN)]).values
            if kind == "bloom":  # [batch * heads, 1, keys]
                row = bias[:, 0, :].double()
            else:  # [heads, q, k] with -inf above the diagonal: the last query row sees every key
                row = bias[:, -1, :].double()
            expected = slopes[kept][:, None] * positions[None, :]
            torch.testing.assert_close(row - row[:, :1], expected - expected[:, :1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ALIBI_FAMILIES)
def test_recomputed_slopes_would_change_the_model(kind):
    """Control: without the selection (slopes recomputed for the smaller head count, as a stock reload
    would) the pruned model no longer equals the masked dense one, so the test above has teeth."""
    pruned, reference = build_family(kind), build_family(kind)
    adapter = get_adapter(pruned)
    keep = random_keep(adapter, uniform=True)
    zero_removed(reference, get_adapter(reference), keep)
    apply_keep(pruned, adapter, keep)
    kept_heads = len(keep[(0, ATTN)])
    for layer in range(adapter.num_layers):
        attn = adapter._attn(layer)
        getattr(attn, alibi._HOOK).remove()
    if kind == "bloom":
        pruned.transformer.num_heads = kept_heads
    else:
        pruned.model.n_head = kept_heads
    assert not torch.allclose(logits(pruned), logits(reference), atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_with_reconstruction(family, method):
    """Every registered method prunes every family (reconstruction on, the default); the report's
    parameter counts equal an independent count of the model's tensors."""
    model = build_family(family)
    before = count_unique_storage(model)
    options = {"steps": 2} if method == "hywia" else {}
    result = prune(model, None, PruneConfig(ratio=0.2, method=method, progress=False, method_options=options),
                   calibration_ids=CALIB)
    params = result.report["parameters"]
    assert params["before"] == before and params["after"] == count_unique_storage(model) < before
    assert torch.isfinite(logits(model)).all()
    assert result.report["reconstruction"]["projections_refitted"] > 0


def test_lora_targets_cover_every_prunable_linear(family):
    model = build_family(family)
    adapter = get_adapter(model)
    targets = set(adapter.lora_targets())
    linear_names = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for target in targets:
        assert any(name.endswith(f".{target}") for name in linear_names), target
    for layer in range(adapter.num_layers):
        for gs in adapter.group_sets(layer):
            for member in gs.members:
                assert member.module.rsplit(".", 1)[-1] in targets, member.module


@pytest.mark.parametrize("kind", ["phi3", "bloom", "baichuan-7b", "baichuan-13b"])
def test_lora_recovery_runs_on_fused_and_alibi_families(kind):
    """hywia's recovery stage (peft LoRA on the adapter's targets, one step, merged) on a pruned model of
    each new family: it trains the adapters and the merged model still uses the surviving heads' slopes."""
    pytest.importorskip("peft")
    from conftest import tiny_tokenizer
    from hywia.recover import RecoverConfig, RecoveryData, recover

    model = build_family(kind)
    adapter = get_adapter(model)
    apply_keep(model, adapter, random_keep(adapter, uniform=False))
    rows = [(PROBE[i % 2], torch.ones(PROBE.shape[1], dtype=torch.long)) for i in range(6)]
    data = RecoveryData(rows[:4], rows[4:], {"source": "test", "train_examples": 4, "train_tokens": 48})
    before = logits(model).clone()
    config = RecoverConfig(objective="lm", batch_size=2, micro_batch_size=2, eval_every=1, progress=False, cutoff=12,
                           warmup_steps=0, max_steps=1, lr=1e-2, dropout=0.0)
    result = recover(model, tiny_tokenizer(), config, data=data)
    assert result.recovery["steps_done"] == 1
    merged = result.model
    assert not torch.equal(logits(merged), before)  # the LoRA update reached the merged weights
    if kind in ALIBI_FAMILIES:
        merged_adapter = get_adapter(merged)
        assert all(getattr(merged_adapter._attn(i), alibi.BUFFER, None) is not None for i in range(3))
