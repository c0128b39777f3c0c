"""bench/compiled_probe.py's CPU-checkable parts: the uniformly pruned shapes it builds and the projections it
replays (fused q/k/v and gate/up give the separate products' outputs side by side)."""

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

BENCH = Path(__file__).parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("compiled_probe", BENCH / "compiled_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uniform_widths_and_fused_projections():
    probe = _module()
    shape = dict(hidden_size=64, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=128, max_position_embeddings=64)
    model = probe.build(shape, 0.5, torch.device("cpu"))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.k_proj.out_features == 2 * 8 and attn.q_proj.out_features == 4 * 8  # 2 of 4 KV groups, head_dim 8
    assert mlp.up_proj.out_features == 256  # half of 512, a multiple of 128
    separate, fused = probe.projection_weights(model, False), probe.projection_weights(model, True)
    assert len(separate) == 7 * 2 + 1 and len(fused) == 4 * 2 + 1
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(F.linear(x, fused[0]), torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], 1))
    torch.testing.assert_close(F.linear(x, fused[2]), torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], 1))
    assert sum(w.numel() for w in fused) == sum(w.numel() for w in separate)
