"""Prune pipeline cost on full-size Bloom-7b1 and Baichuan-7B shapes, randomly initialised.

    python bench/arch_shapes.py --device cuda [--methods hywia wanda-sp] [--ratio 0.2]
    python bench/arch_shapes.py --tiny            # the same code at a tiny shape on the CPU (a smoke test)

No weights are downloaded: each architecture is built on the meta device from its config (Bloom-7b1's
and Baichuan-7B's published shapes), materialised on ``--device`` in bf16 (``to_empty``) and filled with
random N(0, 0.02) weights (norm weights 1, biases 0). Baichuan's modelling code is remote code that
is not downloadable here: the layout-faithful re-creation in ``tests/remote_baichuan`` is used (same
module names, shapes and W_pack split). Calibration is random token ids (the timing does not depend on
the text): ``--calib-samples`` x ``--calib-len``, the pipeline's defaults.

Prints a markdown table: parameters, method, prune wall time (``hywia.prune``: scoring, allocation,
reconstruction, surgery), peak memory (CUDA: ``max_memory_allocated`` during the prune; CPU: the
process's peak RSS so far, which includes the model build) and the achieved ratio. Quality numbers of a
random model mean nothing and are not reported.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the Baichuan re-creation

from hywia import PruneConfig, count_parameters, prune  # noqa: E402

BLOOM_7B1 = dict(hidden_size=4096, n_head=32, n_layer=30, vocab_size=250880)
BAICHUAN_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_hidden_layers=32,
                   vocab_size=64000, max_position_embeddings=4096)
TINY_BLOOM = dict(hidden_size=64, n_head=4, n_layer=2, vocab_size=512)
TINY_BAICHUAN = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_hidden_layers=2,
                     vocab_size=512, max_position_embeddings=256)


def bloom_config(tiny: bool):
    from transformers import BloomConfig

    return BloomConfig(**(TINY_BLOOM if tiny else BLOOM_7B1), tie_word_embeddings=True)


def baichuan_config(tiny: bool):
    from remote_baichuan.configuration_baichuan import BaiChuanConfig

    return BaiChuanConfig(**(TINY_BAICHUAN if tiny else BAICHUAN_7B), architectures=["BaiChuanForCausalLM"])


def build_bloom(config):
    from transformers import BloomForCausalLM

    return BloomForCausalLM(config)


def build_baichuan(config):
    from remote_baichuan.modeling_baichuan import BaiChuanForCausalLM

    return BaiChuanForCausalLM(config)


SHAPES = {"bloom-7b1": (bloom_config, build_bloom), "baichuan-7b": (baichuan_config, build_baichuan)}


@torch.no_grad()
def random_model(build, config, device: str, seed: int) -> nn.Module:
    """``build(config)`` on the meta device, materialised on ``device`` in bf16 with random weights."""
    with torch.device("meta"):
        model = build(config).to(torch.bfloat16)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.dim() == 1:  # norm weights
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    if any(True for _ in model.buffers()):
        raise SystemExit(f"{type(model).__name__} has buffers that to_empty leaves uninitialised")
    model.tie_weights()
    return model.eval()


def peak_memory_gib(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA max allocated during the prune"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS (includes the build)"


def measure(name: str, method: str, args) -> dict:
    make_config, build = SHAPES[name]
    started = time.perf_counter()
    model = random_model(build, make_config(args.tiny), args.device, args.seed)
    build_s = time.perf_counter() - started
    params = count_parameters(model)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.calib_samples, args.calib_len), generator=generator)
    options = {"steps": args.hywia_steps} if method == "hywia" and args.hywia_steps is not None else {}
    config = PruneConfig(ratio=args.ratio, method=method, progress=False, num_samples=args.calib_samples,
                         seq_len=args.calib_len, batch_size=args.batch_size, method_options=options)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
    started = time.perf_counter()
    result = prune(model, None, config, calibration_ids=ids)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(args.device)
    seconds = time.perf_counter() - started
    peak, peak_kind = peak_memory_gib(args.device)
    report = result.report["parameters"]
    del model, result
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"model": f"{name} (tiny)" if args.tiny else name, "params": params, "method": method, "build_s": build_s, "prune_s": seconds,
            "peak_gib": peak, "peak_kind": peak_kind, "achieved": report["achieved_ratio"], "after": report["after"]}


def table(rows: list[dict]) -> str:
    lines = ["| shape | parameters | method | build s | prune s | peak GiB | achieved ratio | parameters after |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['method']} | {r['build_s']:.1f} | {r['prune_s']:.1f} | "
                     f"{r['peak_gib']:.2f} | {r['achieved']:.4f} | {r['after']:,} |")
    kinds = sorted({r["peak_kind"] for r in rows})
    return "\n".join(lines + ["", f"peak: {'; '.join(kinds)}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU smoke test of this script)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["hywia"])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--calib-samples", type=int, default=None, help="default: the pipeline's (128; 4 with --tiny)")
    parser.add_argument("--calib-len", type=int, default=None, help="default: the pipeline's (128; 16 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hywia-steps", type=int, default=None, help="HyWIA fusion steps (default: the method's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = PruneConfig(ratio=args.ratio)
    args.calib_samples = args.calib_samples or (4 if args.tiny else defaults.num_samples)
    args.calib_len = args.calib_len or (16 if args.tiny else defaults.seq_len)
    rows = []
    for name in args.shapes:
        for method in args.methods:
            rows.append(measure(name, method, args))
            print(f"{name} {method}: {rows[-1]['prune_s']:.1f} s", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"Prune pipeline on random {'tiny' if args.tiny else 'full-size'} shapes, bf16, {device}, "
          f"ratio {args.ratio}, {args.calib_samples} x {args.calib_len} calibration tokens\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
