#!/usr/bin/env bash
# The final GPU runs (after `source bench/device_env.sh`): part "ablation" or part "eval".
# Usage: bash bench/gpu_final.sh ablation|eval|speed OUTDIR
# "speed": a 20%-pruned SmolLM2 (HyWIA, layers 4:28) vs dense in bench-speed, then its full 7-task run.
part=$1; out=$2
if [ "$part" = ablation ]; then
  python bench/ablation.py --device cuda --ratios 0.2 0.5 --layers 4:28 \
    --zeroshot-limit 300 --zeroshot-variants element1 vector "hywia (per layer)" "hywia + global" flap \
    --title "Final ablation: every method, HyWIA at its chosen default (issues 3 and 5)" \
    --json "$out/final.json" --write "$out/final.md" 2>&1 | grep -v "it/s"
elif [ "$part" = speed ]; then
  python -m hywia prune --ratio 0.2 --layers 4:28 --device cuda --dtype float32 --eval --out /tmp/smol20 --quiet 2>&1 | tail -5
  python bench/speed.py --model /tmp/smol20 --baseline default --device cuda --dtype float32 --batch-sizes 1,8,64 \
    --label smollm2-135m-dense-vs-20pct-gpu 2>&1 | grep -v "it/s"
  python bench/zeroshot.py --model /tmp/smol20 --device cuda --dtype float32 --batch-size 64 --offline \
    --label smol20-hywia-layers4-28-gpu-full 2>&1 | grep -v "it/s"
  cp BENCHMARKS.md "$out/BENCHMARKS.gpu.md"; cp /tmp/smol20/hywia_report.json "$out/"
else
  python bench/zeroshot.py --device cuda --dtype float32 --batch-size 64 --offline \
    --label smollm2-135m-dense-gpu-full 2>&1 | grep -v "it/s"
  python -m hywia prune --ratio 0.2 --device cuda --dtype float32 --out /tmp/smol20 --quiet 2>&1 | tail -3
  python bench/speed.py --model /tmp/smol20 --baseline default --device cuda --dtype float32 --batch-sizes 1,8,64 \
    --label smollm2-135m-dense-vs-20pct-gpu 2>&1 | grep -v "it/s"
  cp BENCHMARKS.md "$out/BENCHMARKS.gpu.md"
fi
