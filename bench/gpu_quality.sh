#!/usr/bin/env bash
# Issue 10's GPU runs (after `source bench/device_env.sh`). Results go to OUT and to ~/results (kept
# between calls while the machine stays warm).
#   bash bench/gpu_quality.sh sweep OUT            validation sweep of HyWIA recipes, seeds 0 1 2, 20% and 50%
#   bash bench/gpu_quality.sh final RATIO OUT      the table of every method at RATIO with the recipe the
#                                                  sweep selected on validation data (bench/select_default.py)
# MODEL / LABEL / LAYERS / RATIO_BASE override the model (default: the embedded SmolLM2, layers 4:28).
set -uo pipefail
part=$1
mkdir -p ~/results
MODEL_ARGS=(--label "${LABEL:-smollm2-135m}" --layers "${LAYERS:-4:28}" --ratio-base "${RATIO_BASE:-all}")
[ -n "${MODEL:-}" ] && MODEL_ARGS+=(--model "$MODEL")
if [ "$part" = sweep ]; then
  out=$2
  python bench/quality.py "${MODEL_ARGS[@]}" --variants-file bench/variants/sweep.json --ratios 0.2 0.5 \
    --seeds 0 1 2 --device cuda --mc val --out "$out/sweep.jsonl"
  cp "$out/sweep.jsonl" ~/results/
  python bench/select_default.py "$out/sweep.jsonl" --out "$out/final.json" | tee "$out/selected.txt"
  cp "$out/final.json" ~/results/
elif [ "$part" = final ]; then
  ratio=$2; out=$3
  [ -f ~/results/final.json ] || { echo "no ~/results/final.json: run the sweep first" >&2; exit 1; }
  cp ~/results/final.json "$out/final.json"
  python bench/quality.py "${MODEL_ARGS[@]}" --variants-file ~/results/final.json --ratios "$ratio" \
    --seeds 0 1 2 --device cuda --mc val paper --mc-limit "${MC_LIMIT:-200}" --out "$out/final_$ratio.jsonl"
  cp "$out/final_$ratio.jsonl" ~/results/
fi
