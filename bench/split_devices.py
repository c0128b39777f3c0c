"""A model split over two devices -- its first layers on the CPU, the rest on the GPU, each running
where it sits -- through the whole pipeline: prune, perplexity, save, reload. The numbers must match the
same run on one GPU; this is what ``--device auto`` over several GPUs relies on, checked on one GPU.

    source bench/device_env.sh && python bench/split_devices.py --methods hywia element1 flap
"""

from __future__ import annotations

import argparse
import time

import torch

import hywia
from hywia.calibration.texts import DEFAULT_EVALUATION, load_text, tokenize
from hywia.evaluate.perplexity import perplexity
from hywia.models.placement import describe_placement, input_device


def split_map(model, first_on_cpu: int) -> dict:
    """Embeddings, head and the first layers on the CPU, the other layers and the final norm on cuda:0."""
    layers = len(model.model.layers)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu", "model.norm": 0}
    device_map.update({f"model.layers.{i}": "cpu" if i < first_on_cpu else 0 for i in range(layers)})
    return device_map


def load(split: bool, first_on_cpu: int):
    from accelerate import dispatch_model

    loaded = hywia.load_model(None, dtype="float32", device="cpu" if split else "cuda")
    if split:
        device_map = split_map(loaded.model, first_on_cpu)
        loaded.model = dispatch_model(loaded.model, device_map=device_map, main_device="cpu")
        loaded.model.hf_device_map = device_map
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["hywia", "element1", "flap"])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--layers", default="4:28")
    parser.add_argument("--first-on-cpu", type=int, default=15)
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        results = {}
        for split in (False, True):
            started = time.perf_counter()
            loaded = load(split, args.first_on_cpu)
            placement = describe_placement(loaded.model)
            ids = tokenize(loaded.tokenizer, load_text(None, DEFAULT_EVALUATION), 16384)
            config = hywia.PruneConfig(ratio=args.ratio, method=method, layers=args.layers, progress=False)
            result = hywia.prune(loaded.model, loaded.tokenizer, config)
            ppl = perplexity(result.model, ids, progress=False).perplexity
            out = f"/tmp/split_{method}_{int(split)}"
            hywia.save_pruned(result.model, loaded.tokenizer, out, result.report, overwrite=True)
            reloaded = hywia.load_model(out, dtype="float32", device="cuda").model
            probe = ids[:512].view(4, 128)
            with torch.no_grad():
                here = result.model(input_ids=probe.to(input_device(result.model))).logits.float().cpu()
                there = reloaded(input_ids=probe.to("cuda")).logits.float().cpu()
            results[split] = (ppl, result.report["parameters"]["after"], (here - there).abs().max().item())
            print(f"{method:9s} {'split' if split else 'one GPU':8s} {placement}: PPL {ppl:.3f}, "
                  f"{results[split][1]:,} parameters, reload max |dlogit| {results[split][2]:.1e}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        rows.append((method, results))
    print("\n| method | PPL one GPU | PPL split CPU+GPU | parameters one GPU / split | reload max abs logit diff (split) |")
    print("|---|---:|---:|---|---:|")
    for method, r in rows:
        print(f"| {method} | {r[False][0]:.3f} | {r[True][0]:.3f} | {r[False][1]:,} / {r[True][1]:,} | {r[True][2]:.1e} |")


if __name__ == "__main__":
    main()
