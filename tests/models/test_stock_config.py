"""A uniformly pruned Llama whose head count no longer divides hidden_size reloads with stock transformers:
saved as the Mistral config (the same math), loaded by ``AutoModelForCausalLM`` in a process without hywia."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from conftest import VOCAB, build_from_config
from hywia.models.adapters import LAYER_WIDTHS_KEY, get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.models.io import load_pruned, save_pruned, stock_alias
from hywia.models.surgery import apply_keep

RELOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
assert not any(name.startswith("hywia") for name in sys.modules), "hywia was imported"
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
print(type(model).__name__)
"""

ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}


def pruned_uniformly(heads: int, kv_heads: int, keep_kv: int, **extra):
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=32 // heads,
                         max_position_embeddings=64, tie_word_embeddings=False, **extra)
    model = build_from_config(config, seed=3)
    adapter = get_adapter(model)
    keep = {}
    for layer in range(adapter.num_layers):
        keep[(layer, ATTN)] = torch.tensor([kv for kv in range(kv_heads)][-keep_kv:])  # drop the first KV groups
        keep[(layer, MLP)] = torch.arange(0, 40, 2)  # every other channel
    apply_keep(model, adapter, keep)
    return model.eval()


@pytest.mark.parametrize("heads, kv_heads, keep_kv, extra", [
    (4, 4, 3, {}),  # MHA 4 -> 3 heads: 32 % 3 != 0
    (8, 4, 3, {"rope_parameters": ROPE_LLAMA3}),  # GQA 8 -> 6 heads, Llama-3 RoPE scaling
])
def test_uniform_head_removal_reloads_with_stock_transformers(tmp_path, heads, kv_heads, keep_kv, extra):
    model = pruned_uniformly(heads, kv_heads, keep_kv, **extra)
    assert hasattr(model.config, LAYER_WIDTHS_KEY)  # LlamaConfig refuses the stock fields
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    out = save_pruned(model, None, tmp_path / "out", {})
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and LAYER_WIDTHS_KEY not in config
    assert config["num_attention_heads"] == keep_kv * heads // kv_heads and config["head_dim"] == 32 // heads
    report = json.loads((out / "hywia_report.json").read_text())
    assert report["stock_config"] is True and "MistralForCausalLM" in report["stock_config_alias"]
    torch.save(ids, tmp_path / "ids.pt")
    done = subprocess.run([sys.executable, "-c", RELOAD, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "MistralForCausalLM"
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(out)(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


def test_no_alias_for_per_layer_widths_or_llama_only_features():
    widths = [{"num_heads": 3, "num_kv_heads": 3, "intermediate_size": 20}]
    base = {"model_type": "llama", "hidden_size": 32, "head_dim": 8, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 40, "vocab_size": VOCAB, "num_hidden_layers": 2}
    assert stock_alias({**base, LAYER_WIDTHS_KEY: widths * 2})["model_type"] == "mistral"
    assert stock_alias({**base, LAYER_WIDTHS_KEY: [widths[0], {**widths[0], "intermediate_size": 24}]}) is None
    assert stock_alias({**base, LAYER_WIDTHS_KEY: widths * 2, "attention_bias": True}) is None
    assert stock_alias({**base, "model_type": "gemma", LAYER_WIDTHS_KEY: widths * 2}) is None
    assert stock_alias(base) is None
