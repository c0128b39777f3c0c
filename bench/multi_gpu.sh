#!/usr/bin/env bash
# --device auto end to end on a machine with 2+ GPUs (after `source bench/device_env.sh`; see DEVICE.md).
# Prints where each model sits and the same numbers as the single-GPU runs in BENCHMARKS.md, to compare.
# First run: BENCHMARKS.md, issue 13 (2 x H200, 2026-11-30); bench/split_devices.py covers the same paths on one GPU.
# Usage: bash bench/multi_gpu.sh OUTDIR
out=$1
nvidia-smi --query-gpu=index,name --format=csv,noheader
python -m hywia prune --ratio 0.2 --layers 4:28 --device auto --dtype float32 --eval --out /tmp/auto20 --quiet 2>&1 \
  | grep -E "^model:|parameters:|perplexity|saved to|error"
python -m hywia prune --method flap --ratio 0.2 --layers 4:28 --device auto --dtype float32 --eval --quiet 2>&1 \
  | grep -E "^model:|parameters:|perplexity|error"
python -m hywia eval --model /tmp/auto20 --device auto --dtype float32 --text boolq-passages --tasks paper \
  --limit 200 --batch-size 32 --offline 2>&1 | grep -vE "it/s|examples/s|Overwriting|metric acc"
python - <<'PY'
import torch
import hywia
from hywia.calibration.texts import DEFAULT_EVALUATION, load_text, tokenize
from hywia.models.placement import describe_placement, input_device

spread = hywia.load_model("/tmp/auto20", dtype="float32", device="auto").model
single = hywia.load_model("/tmp/auto20", dtype="float32", device="cuda:0").model
ids = tokenize(hywia.load_model("/tmp/auto20").tokenizer, load_text(None, DEFAULT_EVALUATION), 512).view(4, 128)
with torch.no_grad():
    a = spread(input_ids=ids.to(input_device(spread))).logits.float().cpu()
    b = single(input_ids=ids.to("cuda:0")).logits.float().cpu()
print(f"reloaded /tmp/auto20: {describe_placement(spread)}; max |logit difference| vs one GPU: {(a - b).abs().max():.2e}")
PY
cp /tmp/auto20/hywia_report.json "$out/" 2>/dev/null
