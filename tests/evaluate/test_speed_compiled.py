"""bench-speed's compiled decode (static KV cache + torch.compile) on the CPU with the eager backend,
the ideal speed-up column, and a compile failure that is recorded instead of raised."""

import json

import pytest
import torch

from conftest import build_tiny
from hywia.evaluate.speed import SpeedConfig, measure, non_embedding_parameters, speed_table, split_modes
from hywia.errors import HywiaError
from hywia.models.adapters import get_adapter
from hywia.models.groups import ATTN, MLP
from hywia.models.surgery import apply_keep


def per_layer_pruned(kind="llama-gqa"):
    model = build_tiny(kind)
    adapter = get_adapter(model)
    keep = {}
    for layer in range(adapter.num_layers):
        for gs in adapter.group_sets(layer):
            count = gs.num_units - layer if gs.kind == ATTN else gs.num_units - 4 * layer
            keep[gs.key] = torch.arange(max(1, count))
    apply_keep(model, adapter, keep)
    return model


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen2"])
def test_compiled_decode_on_a_static_cache_matches_eager_greedy_tokens(kind):
    model = per_layer_pruned(kind)  # per-layer KV widths: the static cache sizes each layer on first use
    config = SpeedConfig(prompt_len=6, new_tokens=4, batch_sizes=[1, 3], repeats=1, warmup=1,
                         compile_modes=["reduce-overhead"], compile_backend="eager")
    runs = measure(model, config)["runs"]
    for batch, run in runs.items():
        compiled = run["compiled"]["reduce-overhead"]
        assert "error" not in compiled, compiled
        assert compiled["matches_eager"] and compiled["cache"] == "static"
        assert compiled["decode_tokens_per_s"] * compiled["decode_s"] == pytest.approx(int(batch) * 4)
        assert compiled["prefill_tokens_per_s"] * compiled["prefill_s"] == pytest.approx(int(batch) * 6)


def test_a_backend_that_fails_is_recorded_not_raised():
    config = SpeedConfig(prompt_len=4, new_tokens=2, batch_sizes=[1], repeats=1, warmup=0,
                         compile_modes=["default"], compile_backend="no-such-backend")
    run = measure(build_tiny("llama-mha"), config)["runs"]["1"]
    assert "error" in run["compiled"]["default"] and run["decode_tokens_per_s"] > 0  # the eager numbers stand
    entry = {"label": "model", "model": "tiny", "device": "cpu", "dtype": "float32", "parameters": 10,
             "weight_bytes": 40, "macs": {"prefill": 1, "method": "m", "seq_len": 4}, "peak_memory_bytes": 0,
             "peak_memory_method": "x", "runs": {"1": run}, "compile_modes": ["default"], "compile_backend": "no-such-backend"}
    table = speed_table([entry])
    assert "| failed |" in table and "Failed: default: " in table


def test_compile_modes_are_checked():
    with pytest.raises(HywiaError, match="--compile"):
        SpeedConfig(compile_modes=["fastest"]).validate()
    with pytest.raises(HywiaError, match="twice"):
        SpeedConfig(compile_modes=split_modes("default, default")).validate()
    assert split_modes(None) == [] and split_modes("reduce-overhead,max-autotune") == ["reduce-overhead",
                                                                                      "max-autotune"]


def test_ideal_speed_up_is_the_non_embedding_parameter_ratio():
    dense, pruned = build_tiny("llama-mha"), per_layer_pruned("llama-mha")
    embedding = dense.get_input_embeddings().weight.numel()
    assert non_embedding_parameters(dense) == sum(p.numel() for p in dense.parameters()) - embedding
    tied = build_tiny("llama-gqa")  # tied LM head: read every step, so it counts
    assert non_embedding_parameters(tied) == sum(p.numel() for p in tied.parameters())
    config = SpeedConfig(prompt_len=4, new_tokens=2, batch_sizes=[1], repeats=1, warmup=0)
    entries = []
    for label, model in (("dense", dense), ("pruned", pruned)):
        entries.append({"label": label, "model": label, "device": "cpu", "dtype": "float32", "parameters": 1,
                        "non_embedding_parameters": non_embedding_parameters(model), "weight_bytes": 4,
                        "macs": {"prefill": 1, "method": "m", "seq_len": 4}, **measure(model, config)})
    ideal = non_embedding_parameters(dense) / non_embedding_parameters(pruned)
    table = speed_table(entries)
    assert "ideal speed-up" in table and f"{ideal:.2f}x" in table
    json.dumps(entries)  # the --json output stays serialisable


def test_cli_bench_speed_with_compile(tiny_model_dir, tmp_path, capsys):
    from hywia.cli import main

    out = tmp_path / "speed.json"
    code = main(["bench-speed", "--model", str(tiny_model_dir), "--baseline", str(tiny_model_dir), "--dtype", "float32",
                 "--prompt-len", "4", "--new-tokens", "2", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0",
                 "--compile", "--compile-backend", "eager", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "compiled decode tok/s b=2" in printed and "| 1.00x |" in printed
    models = json.loads(out.read_text())["models"]
    assert all(m["runs"][b]["compiled"]["reduce-overhead"]["matches_eager"] for m in models for b in ("1", "2"))
    assert json.loads(out.read_text())["config"]["compile_modes"] == ["reduce-overhead"]


def test_cli_bench_speed_measures_each_compile_mode(tiny_model_dir, tmp_path, capsys):
    from hywia.cli import main

    out = tmp_path / "speed.json"
    code = main(["bench-speed", "--model", str(tiny_model_dir), "--dtype", "float32", "--prompt-len", "4",
                 "--new-tokens", "2", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0",
                 "--compile", "reduce-overhead,default", "--compile-backend", "eager", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "compiled decode tok/s b=1 (reduce-overhead)" in printed and "compiled decode tok/s b=1 (default)" in printed
    compiled = json.loads(out.read_text())["models"][0]["runs"]["1"]["compiled"]
    assert list(compiled) == ["reduce-overhead", "default"]
    assert all(result["mode"] == mode and result["matches_eager"] for mode, result in compiled.items())
