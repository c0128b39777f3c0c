#!/usr/bin/env bash
# Issue 13 on one H200 (after `source bench/device_env.sh`): per-stage time and peak memory at 7B-13B scale,
# then dense-vs-pruned decode speed, eager and compiled. Random bf16 weights (DEVICE.md); 10 x 128 calibration
# tokens as the table. Parts run as separate device calls on one warm machine (each < 10 min):
#   bash bench/gpu_issue13.sh stages   # LLaMA-7B shape: hywia/element1/flap at 20% and 50% (hywia outputs kept)
#   bash bench/gpu_issue13.sh speed    # bench-speed dense vs hywia 20% / 50% (eager + compiled, batch 1 and 32)
#   bash bench/gpu_issue13.sh large    # LLaMA-13B and Llama-3-8B shapes: hywia 20%
set -u
K=/tmp/scale
mkdir -p "$K"
case "$1" in
  stages)
    python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.5 --samples 10 --keep $K
    python bench/scale.py --shapes llama-7b --methods element1 flap --ratios 0.2 0.5 --samples 10 --scratch $K ;;
  speed)
    for r in 0.2 0.5; do cp $K/llama-7b/tokenizer* $K/llama-7b-hywia-$r/; done  # scale.py saves no tokenizer
    python bench/speed.py --model $K/llama-7b-hywia-0.2 $K/llama-7b-hywia-0.5 --baseline $K/llama-7b --device cuda \
      --dtype bfloat16 --batch-sizes 1,32 --new-tokens 128 --repeats 3 --warmup 1 --compile --no-write \
      --json "$OUT/speed_7b.json" ;;
  large)
    rm -rf $K
    python bench/scale.py --shapes llama-13b llama-3-8b --methods hywia --ratios 0.2 --samples 10 ;;
esac
