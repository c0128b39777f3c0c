"""Time of HyWIA's fusion arithmetic per optimisation step at a real model's unit count, without the LLM (issue 13).

One fusion step = the attention blend over every unit (``AttentionFusion``), the fused scores and soft masks of
every (layer, kind) in ``FlatScores``' batched layout, and the backward pass into the fusion parameters: the part of a step
that does not shrink with a faster LLM forward. Scores are random (the cost depends on the counts only).

    python bench/fusion_step.py --shape llama-7b --device cpu      # a CPU model
    python bench/fusion_step.py --shape llama-7b --device cuda     # a GPU model: the fusion runs on its device
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from scale import SHAPES, TINY

from hywia.importance.hywia.flat import FlatScores
from hywia.importance.hywia.fusion import AttentionFusion, blend_inputs, normalise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-7b", choices=[*SHAPES, "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ratio", type=float, default=0.2, help="fraction of units removed per (layer, kind)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    shape = TINY if args.shape == "tiny" else SHAPES[args.shape]
    device = torch.device(args.device)
    units = {"attn": shape["num_key_value_heads"], "mlp": shape["intermediate_size"]}
    keys = [(layer, kind) for layer in range(shape["num_hidden_layers"]) for kind in units]
    generator = torch.Generator().manual_seed(0)
    fine = {k: normalise(torch.rand(units[k[1]], generator=generator)) for k in keys}
    coarse = {k: normalise(torch.rand(units[k[1]], generator=generator)) for k in keys}
    keep = {k: max(1, round((1 - args.ratio) * units[k[1]])) for k in keys}
    depth = max(1, shape["num_hidden_layers"] - 1)
    inputs = {k: blend_inputs(fine[k], coarse[k], depth=k[0] / depth, is_mlp=k[1] == "mlp", keep=keep[k]) for k in keys}
    flat = FlatScores(keys, fine, coarse, device)  # the fusion's layout in ``score_hywia``
    context = torch.cat([inputs[k][0] for k in flat.keys]).to(device)
    descriptors = torch.cat([inputs[k][1] for k in flat.keys]).to(device)
    fusion = AttentionFusion().to(device)
    optimiser = torch.optim.Adam(fusion.parameters(), lr=0.05)
    weights = torch.randn(len(flat.fine), generator=generator).to(device)  # stands in for the LLM's mask gradients

    def step() -> None:
        masks = flat.soft_masks(flat.fuse(fusion(context, descriptors)), keep, 0.1)
        gate_views = flat.split(masks)  # what the gates receive
        loss = (masks * weights).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        loss.item()  # the fusion loop reads the loss every step
        del gate_views

    step()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    row = {"shape": args.shape, "device": str(device), "units": int(len(flat.fine)), "group_sets": len(keys),
           "step_ms": round(1000 * sorted(times)[len(times) // 2], 2), "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(row, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
