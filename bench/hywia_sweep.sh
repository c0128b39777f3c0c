#!/usr/bin/env bash
# Robustness of the HyWIA default vs the single-granularity baselines over calibration seeds, and
# candidate defaults, on held-out LAMBADA (validation) and BoolQ passages (evaluation).
# Usage (GPU machine): source bench/device_env.sh && bash bench/hywia_sweep.sh OUTDIR
out=${1:-.}
candidates='{"hywia s60 b4 kl": ["hywia","uniform",{"steps":60,"batch_size":4,"loss":"kl"}],
 "hywia s60 b4": ["hywia","uniform",{"steps":60,"batch_size":4}],
 "hywia s100 kl": ["hywia","uniform",{"steps":100,"loss":"kl"}],
 "hywia s100 b8 kl": ["hywia","uniform",{"steps":100,"batch_size":8,"loss":"kl"}]}'
for seed in 0 1 2; do
  # seed 0's baselines and default are in the main ablation table already
  baselines=(element1 element2 vector "fixed 0.5/0.5" "hywia (per layer)" "hywia (per group)")
  [ "$seed" = 0 ] && baselines=("hywia (per layer)")
  python bench/ablation.py --device cuda --ratios 0.2 0.5 --layers 4:28 --seed "$seed" \
    --variants "${baselines[@]}" \
    --extra-variants "$candidates" --title "HyWIA sweep, calibration seed $seed" \
    --json "$out/sweep_seed$seed.json" --write "$out/sweep.md" 2>&1 | grep -v "it/s"
done
