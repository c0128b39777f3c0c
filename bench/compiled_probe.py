"""Where does a compiled decode step's time go? Dense vs uniformly pruned LLaMA shapes, kernel by kernel.

``hywia bench-speed --compile`` found that a compiled (static cache, CUDA graphs) batch-1 decode step of the
LLaMA-7B shape costs a bandwidth term plus a constant ~1.9 ms that pruning does not shrink, so the speed-up
at 50% stays below the parameter ratio. This probe splits one step into:

* ``step ms``: wall time per step of ``hywia.evaluate.speed.CompiledDecoder``'s compiled step, in a loop;
* ``kernels``: GPU kernels per step and their summed time (``torch.profiler``), split into matrix products
  (cuBLAS / CUTLASS / nvJet kernels) and everything else (norms, rotary, cache writes, attention, argmax);
* ``linears ms``: every nn.Linear of the model as bare ``F.linear`` calls replayed in one CUDA graph (the
  matrix products alone, back to back, same shapes), and ``read ms``: the model's weight bytes over the GPU's
  bandwidth (``--bandwidth``, TB/s), the floor of a memory-bound step.

The pruned models keep the first (1 - r) of the KV heads and MLP channels of every layer (uniform widths,
through ``models.surgery.apply_keep``, the pruning pipeline's own surgery); random N(0, 0.02) weights.

    source bench/device_env.sh && python bench/compiled_probe.py --shape llama-7b --ratios 0 0.2 0.5 \
        --batch-sizes 1 32 --json $OUT/compiled_probe.json
    python bench/compiled_probe.py --linears-only    # the projections alone: separate vs fused q/k/v, gate/up
    python bench/compiled_probe.py --compile-mode max-autotune --batch-sizes 1   # products autotuned per shape
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import graph_replay_seconds  # noqa: E402
from scale import SHAPES  # noqa: E402

from hywia.evaluate.speed import CompiledDecoder, SpeedConfig, non_embedding_parameters  # noqa: E402
from hywia.models.adapters import get_adapter  # noqa: E402
from hywia.models.groups import ATTN  # noqa: E402
from hywia.models.surgery import apply_keep  # noqa: E402

# cuBLAS / CUTLASS kernels, and Triton kernels inductor generated around a product (max-autotune fuses the
# product with the norm or activation next to it: "triton_red_fused_..._mm_mul_silu_...")
MATMUL_KERNELS = re.compile(r"gemm|gemv|cutlass|nvjet|cublas|splitk|sm90_xmma|sm80_xmma|triton.*_b?mm(_|$)",
                            re.IGNORECASE)


def build(shape: dict, ratio: float, device: torch.device, mlp_step: int = 128) -> nn.Module:
    """A random bf16 Llama of ``shape`` with the first (1 - ratio) KV heads and MLP channels of every layer
    (MLP widths rounded to multiples of ``mlp_step``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=False),
                                                 dtype=torch.bfloat16)
    if ratio > 0:
        adapter = get_adapter(model)
        keep = {}
        for layer in range(adapter.num_layers):
            for group_set in adapter.group_sets(layer):
                step = 1 if group_set.kind == ATTN else mlp_step
                kept = max(step, int(round(group_set.num_units * (1 - ratio) / step)) * step)
                keep[group_set.key] = torch.arange(kept)
        apply_keep(model, adapter, keep)
    return model.eval()


def prefill(decoder: CompiledDecoder, ids: torch.Tensor) -> torch.Tensor:
    decoder.cache.reset()
    out = decoder.model(input_ids=ids, use_cache=True, **{decoder.cache_name: decoder.cache})
    return out.logits[:, -1:].argmax(-1)


def step_loop(decoder: CompiledDecoder, ids: torch.Tensor, steps: int) -> float:
    """Seconds of ``steps`` compiled decode steps after a prefill (synchronised at both ends)."""
    next_ids = prefill(decoder, ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        positions = torch.full((ids.shape[0], 1), ids.shape[1] + step, dtype=torch.long, device=ids.device)
        next_ids = decoder.step(next_ids, positions).clone()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def kernel_profile(decoder: CompiledDecoder, ids: torch.Tensor, steps: int) -> dict:
    """Kernels and their summed time (matrix products apart) of a prefill and ``steps`` steps, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_loop(decoder, ids, steps)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    matmul = [e for e in kernels if MATMUL_KERNELS.search(e.name)]
    top: dict[str, float] = {}
    for e in kernels:
        top[e.name[:60]] = top.get(e.name[:60], 0.0) + e.device_time / 1e3
    return {
        "kernels_total": len(kernels),
        "kernel_ms_total": sum(e.device_time for e in kernels) / 1e3,
        "matmul_kernels_total": len(matmul),
        "matmul_ms_total": sum(e.device_time for e in matmul) / 1e3,
        "top_ms_total": dict(sorted(top.items(), key=lambda item: -item[1])[:12]),
    }


def projection_weights(model: nn.Module, fused: bool) -> list[torch.Tensor]:
    """The weights of every projection in execution order; ``fused`` concatenates q/k/v and gate/up of each
    layer into one matrix, as serving engines (vLLM's QKVParallelLinear, MergedColumnParallelLinear) run them."""
    weights = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, gate_up = (attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)
        if fused:
            weights += [torch.cat([m.weight for m in qkv]), attn.o_proj.weight,
                        torch.cat([m.weight for m in gate_up]), mlp.down_proj.weight]
        else:
            weights += [m.weight for m in (*qkv, attn.o_proj, *gate_up, mlp.down_proj)]
    return weights + [model.get_output_embeddings().weight]


@torch.inference_mode()
def linears_graph_ms(model: nn.Module, batch: int, fused: bool = False, replays: int = 20) -> float:
    """Milliseconds of every projection of ``model`` as bare F.linear calls, replayed in one CUDA graph."""
    weights = projection_weights(model, fused)
    inputs = [torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
    seconds = graph_replay_seconds(lambda: [F.linear(x, w) for x, w in zip(inputs, weights)], replays=replays)
    del weights
    return seconds * 1e3


def linears_only(model: nn.Module, batch: int, args) -> dict:
    weight_bytes = sum(w.numel() * w.element_size() for w in projection_weights(model, False))
    return {"batch": batch, "linears_graph_ms": linears_graph_ms(model, batch),
            "fused_linears_graph_ms": linears_graph_ms(model, batch, fused=True),
            "read_ms": weight_bytes / (args.bandwidth * 1e12) * 1e3}


def probe(model: nn.Module, batch: int, args) -> dict:
    config = SpeedConfig(prompt_len=args.prompt_len, new_tokens=args.steps, batch_sizes=[batch])
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, args.prompt_len), generator=generator).to("cuda")
    decoder = CompiledDecoder(model, batch, config, args.compile_mode)
    start = time.perf_counter()
    with torch.inference_mode():
        step_loop(decoder, ids, args.steps)  # compiles
        compile_s = time.perf_counter() - start
        step_ms = statistics.median(step_loop(decoder, ids, args.steps) for _ in range(args.repeats)) * 1e3 / args.steps
        profiled = kernel_profile(decoder, ids, args.steps)
        base = kernel_profile(decoder, ids, 0)  # the prefill's kernels alone: subtracted to get per-step counts
    per_step = {key: (profiled[key] - base[key]) / args.steps
                for key in ("kernels_total", "kernel_ms_total", "matmul_kernels_total", "matmul_ms_total")}
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - \
        model.get_input_embeddings().weight.numel() * 2
    return {
        "batch": batch, "compile_mode": args.compile_mode, "inductor": args.inductor, "compile_s": compile_s,
        "step_ms": step_ms,
        "kernels_per_step": per_step["kernels_total"], "kernel_ms_per_step": per_step["kernel_ms_total"],
        "matmul_kernels_per_step": per_step["matmul_kernels_total"],
        "matmul_ms_per_step": per_step["matmul_ms_total"],
        "linears_graph_ms": linears_graph_ms(model, batch),
        "fused_linears_graph_ms": linears_graph_ms(model, batch, fused=True),
        "read_ms": weight_bytes / (args.bandwidth * 1e12) * 1e3,
        "top_ms_profiled": profiled["top_ms_total"],
    }


def measured_rows(args, measure):
    """One row per (ratio, batch size): ``measure(model, batch, args)`` on a model built once per ratio."""
    for ratio in args.ratios:
        model = build(SHAPES[args.shape], ratio, torch.device("cuda"), args.mlp_step)
        params = non_embedding_parameters(model) / 1e6
        for batch in args.batch_sizes:
            yield {"shape": args.shape, "ratio": ratio, "non_embedding_params_m": params, **measure(model, batch, args)}
        del model
        gc.collect()
        torch.cuda.empty_cache()


def set_inductor_options(settings: list[str]) -> None:
    """``KEY=VALUE`` strings onto ``torch._inductor.config`` (VALUE as a Python literal: True, 0.5, 'ATEN')."""
    import ast

    import torch._inductor.config as inductor_config

    for setting in settings:
        key, _, value = setting.partition("=")
        if not hasattr(inductor_config, key):
            raise SystemExit(f"--inductor: torch._inductor.config has no {key!r}")
        setattr(inductor_config, key, ast.literal_eval(value))


def step_line(row: dict) -> str:
    other = row["kernel_ms_per_step"] - row["matmul_ms_per_step"]
    top = json.dumps({k: round(v, 2) for k, v in row["top_ms_profiled"].items()})
    return (f"| {row['ratio']:.0%} | {row['non_embedding_params_m']:,.0f} | {row['batch']} | {row['step_ms']:.2f} | "
            f"{row['kernels_per_step']:.0f} | {row['kernel_ms_per_step']:.2f} ({row['matmul_ms_per_step']:.2f} / "
            f"{other:.2f}) | {row['step_ms'] - row['kernel_ms_per_step']:.2f} | {row['linears_graph_ms']:.2f} | "
            f"{row['read_ms']:.2f} |\n  top kernels (ms over the profiled steps): {top}")


def linears_line(row: dict) -> str:
    return (f"| {row['ratio']:.0%} | {row['non_embedding_params_m']:,.0f} | {row['batch']} | "
            f"{row['linears_graph_ms']:.2f} | {row['fused_linears_graph_ms']:.2f} | {row['read_ms']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-7b", choices=list(SHAPES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.2, 0.5])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=4.8, help="GPU memory bandwidth, TB/s (H200: 4.8)")
    parser.add_argument("--mlp-step", type=int, default=128, help="pruned MLP widths are multiples of this")
    parser.add_argument("--compile-mode", default="reduce-overhead", choices=("reduce-overhead", "max-autotune"))
    parser.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE",
                        help="torch._inductor.config settings for the compile, e.g. prologue_fusion=False")
    parser.add_argument("--linears-only", action="store_true",
                        help="only the projections' CUDA graph, separate and fused (no compile, no profile)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    set_inductor_options(args.inductor)
    if args.linears_only:
        measure, line = linears_only, linears_line
        print("| ratio | params (M) | batch | projections ms | fused q/k/v + gate/up ms | weight read ms |\n"
              "|---|---:|---:|---:|---:|---:|")
    else:
        measure, line = probe, step_line
        print("| ratio | params (M) | batch | step ms | kernels / step | kernel ms (matmul / other) | gaps ms | "
              "linears-only graph ms | weight read ms |\n|---|---:|---:|---:|---:|---|---:|---:|---:|")
    rows = []
    for row in measured_rows(args, measure):
        rows.append(row)
        print(line(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
