"""``load_pruned`` builds the model on the meta device and reads the shards one at a time."""

import pytest
import safetensors
import torch

from conftest import build_tiny
from hywia.errors import HywiaError
from hywia.models.adapters import LAYER_WIDTHS_KEY, get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.models.io import load_pruned, save_pruned
from hywia.models.surgery import apply_keep


def prune_per_layer(model):
    """Different widths in every layer: the config can only describe them through hywia_layer_widths."""
    adapter = get_adapter(model)
    keep = {}
    for layer in range(adapter.num_layers):
        for gs in adapter.group_sets(layer):
            count = max(1, gs.num_units - 1 - layer) if gs.kind == ATTN else gs.num_units - 3 * (layer + 1)
            keep[gs.key] = torch.arange(gs.num_units - count, gs.num_units)
    apply_keep(model, adapter, keep)
    assert hasattr(model.config, LAYER_WIDTHS_KEY)
    return model


@pytest.fixture
def open_shards(monkeypatch):
    """Every shard opened, with the most open at once."""
    import transformers.modeling_utils  # noqa: F401  (imported before the patch: it keeps its own safe_open)

    record = {"opened": [], "open": 0, "most": 0}
    original = safetensors.safe_open

    class Counting:
        def __init__(self, path, *args, **kwargs):
            self.inner = original(path, *args, **kwargs)
            record["opened"].append(path)

        def __enter__(self):
            record["open"] += 1
            record["most"] = max(record["most"], record["open"])
            return self.inner.__enter__()

        def __exit__(self, *exc):
            record["open"] -= 1
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    return record


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2", "gemma2"])
def test_meta_load_of_per_layer_widths_gives_identical_logits(tmp_path, monkeypatch, open_shards, kind, probe_ids):
    model = prune_per_layer(build_tiny(kind))
    with torch.no_grad():
        expected = model(input_ids=probe_ids).logits
    monkeypatch.setattr("hywia.models.io.MAX_SHARD_SIZE", 20_000)  # several shards, and an index
    out = save_pruned(model, None, tmp_path / "out", {})
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()

    built_on = []
    from transformers import AutoModelForCausalLM
    original = AutoModelForCausalLM.from_config

    def spy(*args, **kwargs):
        built = original(*args, **kwargs)
        built_on.append({p.device.type for p in built.parameters()})
        return built

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", spy)
    reloaded = load_pruned(out)
    assert built_on == [{"meta"}]
    assert sorted(map(str, open_shards["opened"])) == sorted(map(str, shards)) and open_shards["most"] == 1
    assert all(p.device.type == "cpu" for p in reloaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe_ids).logits, expected, atol=0, rtol=0)


def test_tied_embeddings_stay_tied(tmp_path, probe_ids):
    model = prune_per_layer(build_tiny("llama-gqa"))  # tie_word_embeddings=True
    out = save_pruned(model, None, tmp_path / "out", {})
    reloaded = load_pruned(out)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=probe_ids).logits, model(input_ids=probe_ids).logits, atol=0, rtol=0)


def test_bfloat16_load_casts_the_weights(tmp_path):
    out = save_pruned(prune_per_layer(build_tiny("qwen2")), None, tmp_path / "out", {})
    reloaded = load_pruned(out, dtype="bfloat16")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}


def test_a_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    out = save_pruned(prune_per_layer(build_tiny("qwen2")), None, tmp_path / "out", {})
    shard = next(out.glob("*.safetensors"))
    state = load_file(str(shard))
    state.pop(sorted(k for k in state if "mlp.up_proj" in k)[0])
    save_file(state, str(shard), metadata={"format": "pt"})
    with pytest.raises(HywiaError, match="missing.*up_proj"):
        load_pruned(out)
