"""bench/compiled_probe.py's and bench/width_sweep.py's CPU-checkable parts: the uniformly pruned shapes the
probe builds and the projections it replays (fused q/k/v and gate/up give the separate products' outputs side
by side), its inductor options and kernel classes, and the sweep's widths and product shapes."""

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


def test_mlp_step_inductor_options_and_matmul_kernel_names():
    probe = _module()
    shape = dict(hidden_size=64, intermediate_size=512, num_hidden_layers=1, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=128, max_position_embeddings=64)
    assert probe.build(shape, 0.3, torch.device("cpu"), mlp_step=64).model.layers[0].mlp.up_proj.out_features == 384
    import torch._inductor.config as inductor_config

    before = inductor_config.epilogue_fusion
    try:
        probe.set_inductor_options([f"epilogue_fusion={not before}"])
        assert inductor_config.epilogue_fusion is (not before)
    finally:
        inductor_config.epilogue_fusion = before
    try:
        probe.set_inductor_options(["no_such_option=1"])
        raise AssertionError("an unknown inductor option was accepted")
    except SystemExit as error:
        assert "no_such_option" in str(error)
    names = {"triton_red_fused__unsafe_view_mm_mul_silu_t_view_7": True, "nvjet_sm90_tst_256x128_64x4": True,
             "triton_poi_fused_add_copy__20": False, "cudnn_generated_fort_native_sdpa_sm80": False}
    assert {name: bool(probe.MATMUL_KERNELS.search(name)) for name in names} == names


def test_width_sweep_widths_and_shapes():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("width_sweep", BENCH / "width_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert sweep.parse_widths("5120:5376:128") == [5120, 5248, 5376]
    assert sweep.parse_widths("5504,8832") == [5504, 8832]
    assert sweep.product_shape("mlp_in", 8832, 4096) == (8832, 4096)
    assert sweep.product_shape("attn_out", 3328, 4096) == (4096, 3328)
