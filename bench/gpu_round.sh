#!/usr/bin/env bash
# One device session on two H200s of one host (nvidia-h200-x2), after `source bench/device_env.sh`: each call runs
# two independent parts at once, one per GPU, and writes its rows under $OUT (partial rows survive a time-out).
#   bash bench/gpu_round.sh A   # GPU0: issue-12 recipe sweep (validation only) | GPU1: issue-13 7B stages + eager probe
#   bash bench/gpu_round.sh B   # issue-12 table with the recipe the sweep chose: GPU0 20%, GPU1 50%
#   bash bench/gpu_round.sh C   # issue-10 full-set 7-task rows (hywia + the three best others, 3 seeds): GPU0 20%, GPU1 50%
#   bash bench/gpu_round.sh D   # GPU0: issue-13 LLaMA-13B / Llama-3-8B stages (peak-traced) | GPU1: 7B recovery steps
#   bash bench/gpu_round.sh E   # issue-10 round 4 (hywia, hywia fine wanda-sp, Wanda-sp + rec; 3 seeds, full sets): GPU0 20%, GPU1 50%
#   ROUND5="name,name" bash bench/gpu_round.sh F  # issue-10 round 5 (those variants of issue10_round5.json, 3 seeds,
#                               # full sets): one process per (ratio, variant): GPU0 20%, GPU1 50%
#   ROUND5="name,name" bash bench/gpu_round.sh G  # the same variants on Gemma-3-270M (all 18 layers, 10% and 20%,
#                               # first 200 docs per 7-task task as round 2): GPU0 10%, GPU1 20%
#   ROUND5="name" LIMIT_S=250 bash bench/gpu_round.sh H  # one process per (model, ratio, seed, variant): SmolLM2
#                               # 20% / 50% (validation columns only) on GPU0, Gemma-3-270M 10% / 20% (and 7-task,
#                               # 200 docs) on GPU1; 2 CPU threads per process
#   bash bench/gpu_round.sh I   # issue-10 reported rows of the round-5 default: one process per seed and ratio on GPU0
#                               # (SmolLM2, full 7-task sets); GPU1: Gemma-3-270M baselines at round-to auto (200 docs)
#   bash bench/gpu_round.sh J   # GPU0: I's SmolLM2 rows | GPU1 alone: issue-13 7B / 8B stages with the fusion on the
#                               # GPU (no other process on that GPU), then the fusion step's time there
#   bash bench/gpu_round.sh K   # issue-12 table, calibration seeds 1 and 2 (7-task: first 1,000 docs, as seed 0):
#                               # one process per (seed, method): GPU0 20%, GPU1 50%; micro-batch 8 (12 processes)
#   bash bench/gpu_round.sh L   # I's Gemma-3-270M baselines only: GPU0 10%, GPU1 20%
#   bash bench/gpu_round.sh M   # the Gemma-3-270M default, one process per (ratio, seed): GPU0 10%, GPU1 20%
#   bash bench/gpu_round.sh N   # issue 13 after the Gram work-space changes: GPU0 alone: 7B (peak-traced) / 8B / 13B
#                               # hywia stages | GPU1: the compiled decode step kernel by kernel (dense vs 50%),
#                               # then the Gram solves at the 7B shape on the GPU (profiled)
#   bash bench/gpu_round.sh P   # issue 13 after the sequential score's fewer launches: GPU0: 7B hywia 20% / 50%
#                               # stages | GPU1: the sequential score at the 7B shape (profiled), the projections
#                               # alone as a CUDA graph, separate vs fused (dense, 20%, 50%)
#   bash bench/gpu_round.sh Q   # issue 13, the fusion step as CUDA graphs: GPU0: 7B hywia 20% / 50% stages (graph
#                               # auto) | GPU1: the CUDA test of the graphed step, then 7B hywia 20% with --hywia-graph off
#   bash bench/gpu_round.sh R   # issue 13, widths the GPU runs well: GPU0: 7B hywia 20% twice + 50% (peak after the
#                               # in-place Cholesky) | GPU1: decode-shaped products over MLP / attention widths
#                               # (cuBLAS, then Triton at a few), then the compiled step with max-autotune
#                               # (random shapes only: needs no staging, PYTHONPATH=src is enough)
#   bash bench/gpu_round.sh S   # issue 13: the compiled step with max-autotune, dense / 20% / 50%: GPU0 batch 1,
#                               # GPU1 batch 32 (random shapes only, as R)
#   bash bench/gpu_round.sh T   # S with inductor's prologue fusion off (the norm no longer recomputed per GEMM tile)
#   bash bench/gpu_round.sh U   # issue 13, where the 7B prune's time goes: GPU0: hywia 20% twice in one process,
#                               # profiled (coarse score apart, top operators) | GPU1: one run with the CUDA kernels
#                               # loaded at start-up (CUDA_MODULE_LOADING=EAGER): is a first run's extra time loading?
#   bash bench/gpu_round.sh V   # issue 13 after the head blocks' batched triangular solve: GPU0: 7B hywia 20% twice
#                               # + 50% | GPU1: the small solves' formulations, the sequential score at 7B (profiled)
#   bash bench/gpu_round.sh W   # issue 13, --device auto over both GPUs (random shapes, no staging): LLaMA-13B and
#                               # Llama-3-8B, hywia and flap 20%, per-GPU peaks, each output reloaded (logits compared)
#   bash bench/gpu_round.sh X   # issue 13, --device auto end to end on SmolLM2 (bench/multi_gpu.sh: prune, eval,
#                               # reload vs one GPU); needs the staged model, data and wheels (device_env.sh)
#   bash bench/gpu_round.sh O   # issue-12 LM rows of seeds 1 and 2: one process per (seed, ratio), three methods each
# Every part is a command of its own; this file only runs two of them side by side.
set -u
S=~/stage
K=/tmp/scale
LIMIT=${LIMIT:-}  # documents per zero-shot task in part B (empty: full sets)
SEED=${SEED:-0}   # calibration seed of the pruning in part B
IFS=, read -r -a VARIANTS <<< "${ROUND5:-}"  # part F: variant names, comma-separated
SWEEP=$S/sweep12.jsonl; [ -f "$SWEEP" ] || SWEEP=bench/results/issue12_sweep_gpu.jsonl  # part A's rows (recipe choice)
part() {  # GPU, log name, timeout seconds, command...
  local gpu=$1 name=$2 limit=$3; shift 3
  ( CUDA_VISIBLE_DEVICES=$gpu timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "exit $? after ${SECONDS}s" >> "$OUT/$name.log" ) &
}
case "$1" in
  A)
    part 0 sweep12 560 python bench/recovery.py --device cuda --ratios 0.2 --methods hywia --objectives distill \
      --mc val --sweep "" "lr=5e-4 batch_size=32" "lr=1e-3 batch_size=32 epochs=4" \
      "lr=1e-3 batch_size=32 epochs=4 rank=32 alpha=64" "lr=2e-3 batch_size=16 epochs=8" \
      --out-jsonl "$OUT/sweep12.jsonl"
    part 1 stages13 560 bash -c "
      python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 --samples 10 --keep $K --peak-trace &&
      python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.5 --samples 10 --keep $K &&
      python bench/scale.py --shapes llama-7b --methods element1 flap --ratios 0.2 0.5 --samples 10 --scratch $K &&
      for r in 0.2 0.5; do cp $K/llama-7b/tokenizer* $K/llama-7b-hywia-\$r/; done &&
      python bench/eager_probe.py $K/llama-7b $K/llama-7b-hywia-0.2 $K/llama-7b-hywia-0.5 --json $OUT/eager_probe.json"
    wait
    cp "$OUT/sweep12.jsonl" $S/ 2>/dev/null ;;
  B)
    for gpu_ratio in "0 0.2" "1 0.5"; do
      set -- $gpu_ratio
      part "$1" "table12_$2" 570 python bench/recovery.py --device cuda --ratios "$2" --methods hywia,element1,flap \
        --objectives distill,lm --mc val paper ${LIMIT:+--limit $LIMIT} --recipe-from "$SWEEP" \
        --seed "$SEED" --out-jsonl "$OUT/table12_$2.jsonl"
    done
    wait ;;
  C)
    for gpu_ratio in "0 0.2" "1 0.5"; do
      set -- $gpu_ratio
      part "$1" "full10_$2" 575 python bench/quality.py --variants-file bench/variants/issue10_round2.json \
        --only "hywia uniform" "flap + rec" "wanda-sp + rec" "element1 + rec" --ratios "$2" --seeds 0 1 2 \
        --device cuda --mc val paper --out "$OUT/full10_$2.jsonl"
    done
    wait ;;
  D)
    part 0 large13 570 python bench/scale.py --shapes llama-13b llama-3-8b --methods hywia --ratios 0.2 --samples 10 \
      --peak-trace
    part 1 recstep12 570 python bench/recovery_step.py --shape llama-7b --ratio 0.2 --steps 4 --json "$OUT/recstep12.json"
    wait ;;
  E)
    for gpu_ratio in "0 0.2" "1 0.5"; do
      set -- $gpu_ratio
      part "$1" "round4_$2" 575 python bench/quality.py --variants-file bench/variants/issue10_round4.json \
        --only "hywia fine wanda-sp" "wanda-sp + rec" "hywia uniform" --ratios "$2" --seeds 0 1 2 \
        --device cuda --mc val paper --out "$OUT/round4_$2.jsonl"
    done
    wait ;;
  F)
    for gpu_ratio in "0 0.2" "1 0.5"; do
      set -- $gpu_ratio
      for variant in "${VARIANTS[@]}"; do
        part "$1" "round5_$2_${variant// /_}" 575 python bench/quality.py --variants-file bench/variants/issue10_round5.json \
          --only "$variant" --ratios "$2" --seeds 0 1 2 --device cuda --mc val paper --skip-dense --out "$OUT/round5_$2_${variant// /_}.jsonl"
      done
    done
    wait ;;
  G)
    for gpu_ratio in "0 0.1" "1 0.2"; do
      set -- $gpu_ratio
      for variant in "${VARIANTS[@]}"; do
        part "$1" "gemma5_$2_${variant// /_}" 450 python bench/quality.py --model /tmp/gemma3-270m.gguf --label gemma3-270m \
          --layers 0:18 --variants-file bench/variants/issue10_round5.json --only "$variant" --ratios "$2" --seeds 0 1 2 \
          --device cuda --mc val paper --mc-limit 200 --skip-dense --out "$OUT/gemma5_$2_${variant// /_}.jsonl"
      done
    done
    wait ;;
  H)
    export OMP_NUM_THREADS=2
    for variant in "${VARIANTS[@]}"; do
      for seed in 0 1 2; do
        for ratio in 0.2 0.5; do
          part 0 "h_smol_${ratio}_${seed}_${variant// /_}" "${LIMIT_S:-250}" python bench/quality.py \
            --variants-file bench/variants/issue10_round5.json --only "$variant" --ratios $ratio --seeds $seed \
            --device cuda --mc val --skip-dense --out "$OUT/h_smol_${ratio}_${seed}_${variant// /_}.jsonl"
        done
        for ratio in 0.1 0.2; do
          part 1 "h_gemma_${ratio}_${seed}_${variant// /_}" "${LIMIT_S:-250}" python bench/quality.py \
            --model /tmp/gemma3-270m.gguf --label gemma3-270m --layers 0:18 \
            --variants-file bench/variants/issue10_round5.json --only "$variant" --ratios $ratio --seeds $seed \
            --device cuda --mc val paper --mc-limit 200 --skip-dense --out "$OUT/h_gemma_${ratio}_${seed}_${variant// /_}.jsonl"
        done
      done
    done
    wait ;;
  I|J|L)
    export OMP_NUM_THREADS=2
    P=$1
    if [ "$P" != L ]; then
      for seed in 0 1 2; do
        for ratio in 0.2 0.5; do
          part 0 "i_smol_${ratio}_${seed}" "${LIMIT_S:-560}" python bench/quality.py --variants-file bench/variants/issue10_round5.json \
            --only "hywia compensated gates sequential" --ratios $ratio --seeds $seed --device cuda --mc val paper \
            --skip-dense --out "$OUT/i_smol_${ratio}_${seed}.jsonl"
        done
      done
    fi
    if [ "$P" = J ]; then
      part 1 j_scale13 560 bash -c "python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.5 --samples 10 &&
        python bench/scale.py --shapes llama-3-8b --methods hywia --ratios 0.2 --samples 10 &&
        python bench/fusion_step.py --shape llama-7b --device cuda --steps 20 && python bench/fusion_step.py --shape llama-7b --device cpu"
    else
      for variant in "flap + rec" "wanda-sp + rec" "element1 + rec"; do
        for gpu_ratio in "0 0.1" "1 0.2"; do
          set -- $gpu_ratio
          gpu=$1; [ "$P" = I ] && gpu=1
          part $gpu "i_gemma_$2_${variant// /_}" "${LIMIT_S:-560}" python bench/quality.py --model /tmp/gemma3-270m.gguf \
            --label gemma3-270m --layers 0:18 --variants-file bench/variants/issue10_round2.json --only "$variant" --ratios $2 \
            --seeds 0 1 2 --device cuda --mc val paper --mc-limit 200 --skip-dense --out "$OUT/i_gemma_$2_${variant// /_}.jsonl"
        done
      done
    fi
    wait
    cat "$OUT"/i_*.jsonl > "$OUT/round5_reported.jsonl" 2>/dev/null && rm -f "$OUT"/i_*.jsonl
    grep -h "^[0-9]*% s\|^exit" "$OUT"/[ij]_*.log; grep -h "^|\|^{\|Error" "$OUT"/j_*.log 2>/dev/null; tar czf "$OUT/logs_$P.tgz" -C "$OUT" $(cd "$OUT" && ls [ij]_*.log) && rm -f "$OUT"/[ij]_*.log ;;  # the device returns ~8 files
  M)
    export OMP_NUM_THREADS=2
    for seed in 0 1 2; do
      for gpu_ratio in "0 0.1" "1 0.2"; do
        set -- $gpu_ratio
        part "$1" "m_gemma_$2_$seed" "${LIMIT_S:-450}" python bench/quality.py --model /tmp/gemma3-270m.gguf --label gemma3-270m \
          --layers 0:18 --variants-file bench/variants/issue10_round5.json --only "hywia compensated gates sequential" \
          --ratios $2 --seeds $seed --device cuda --mc val paper --mc-limit 200 --skip-dense --out "$OUT/m_gemma_$2_$seed.jsonl"
      done
    done
    wait
    cat "$OUT"/m_*.jsonl > "$OUT/gemma_default.jsonl" 2>/dev/null && rm -f "$OUT"/m_*.jsonl
    grep -h "^[0-9]*% s\|^exit" "$OUT"/m_*.log; tar czf "$OUT/logs_m.tgz" -C "$OUT" $(cd "$OUT" && ls m_*.log) && rm -f "$OUT"/m_*.log ;;
  N)
    part 0 n_scale13 580 bash -c "python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.5 --samples 10 &&
      python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 --samples 10 --peak-trace &&
      python bench/scale.py --shapes llama-3-8b llama-13b --methods hywia --ratios 0.2 --samples 10"
    part 1 n_gram13 580 bash -c "python bench/compiled_probe.py --shape llama-7b --ratios 0 0.5 --batch-sizes 1 32 \
      --json $OUT/compiled_probe.json; python bench/gram_space.py --device cuda --d-mlp-sequential 11008 \
      --d-out-sequential 4096 --profile"
    wait ;;
  P)
    part 0 p_scale13 400 python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.5 --samples 10
    part 1 p_seq13 400 bash -c "python bench/gram_space.py --device cuda --part sequential --d-mlp-sequential 11008 \
      --d-out-sequential 4096 --profile; python bench/compiled_probe.py --linears-only --ratios 0 0.2 0.5 \
      --batch-sizes 1 32 --json $OUT/linears_probe.json"
    wait ;;
  Q)
    part 0 q_scale13 400 python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.5 --samples 10
    part 1 q_eager13 400 bash -c "(python -m pytest -q -p no:cacheprovider tests/importance/test_graphed_fusion.py ||
      PYTHONPATH=tests:\$PYTHONPATH python -c 'import test_graphed_fusion as t; t.test_graphed_step_gives_the_eager_loss_and_mask_gradient(); print(\"graphed == eager: ok\")');
      python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 --samples 10 --hywia-graph off"
    wait ;;
  R)
    part 0 r_scale13 500 python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.2 0.5 --samples 10
    part 1 r_widths13 560 bash -c "python bench/width_sweep.py --kinds mlp_in mlp_out --widths 5120:11008:64 \
      --json $OUT/width_sweep_mlp.json; python bench/width_sweep.py --kinds attn_in attn_out --widths 2048:4096:128 \
      --json $OUT/width_sweep_attn.json; python bench/width_sweep.py --backend triton --kinds mlp_in mlp_out \
      --batch-sizes 1 --widths 5504,5632,8832,8960,11008 --json $OUT/width_sweep_triton.json;
      python bench/compiled_probe.py --compile-mode max-autotune --ratios 0 0.5 --batch-sizes 1 \
      --json $OUT/compiled_probe_autotune.json"
    wait ;;
  S|T)
    if [ "$1" = S ]; then tag=s; name=autotune; inductor=""; else tag=t; name=autotune_noprologue; inductor=prologue_fusion=False; fi
    for gpu_batch in "0 1" "1 32"; do
      set -- $gpu_batch
      part "$1" "${tag}_autotune_b$2" 560 python bench/compiled_probe.py --compile-mode max-autotune --ratios 0 0.2 0.5 \
        --batch-sizes "$2" --inductor $inductor --json "$OUT/compiled_probe_${name}_b$2.json"
    done
    wait ;;
  U)
    part 0 u_profile13 420 python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.2 --samples 10 --profile
    part 1 u_eager_loading13 420 env CUDA_MODULE_LOADING=EAGER python bench/scale.py --shapes llama-7b --methods hywia \
      --ratios 0.2 --samples 10
    wait ;;
  V)
    part 0 v_scale13 500 python bench/scale.py --shapes llama-7b --methods hywia --ratios 0.2 0.2 0.5 --samples 10
    part 1 v_solves13 500 bash -c "python bench/small_solves.py; python bench/gram_space.py --device cuda \
      --part sequential --d-model 8192 --d-mlp-sequential 11008 --d-out-sequential 4096 --profile"
    wait ;;
  W)
    ( timeout 560 python bench/scale.py --device auto --shapes llama-13b llama-3-8b --methods hywia flap --ratios 0.2 \
      --samples 10 --check-reload > "$OUT/w_auto13.log" 2>&1; echo "exit $? after ${SECONDS}s" >> "$OUT/w_auto13.log" ) ;;
  X)
    ( timeout 560 bash bench/multi_gpu.sh "$OUT" > "$OUT/x_multi_gpu13.log" 2>&1
      echo "exit $? after ${SECONDS}s" >> "$OUT/x_multi_gpu13.log" ) ;;
  O)
    export OMP_NUM_THREADS=2
    for seed in 1 2; do
      for gpu_ratio in "0 0.2" "1 0.5"; do
        set -- $gpu_ratio
        part "$1" "o_$2_$seed" 570 python bench/recovery.py --device cuda --ratios "$2" --methods hywia,element1,flap \
          --objectives lm --mc val paper --limit 1000 --recipe-from "$SWEEP" --skip-dense --seed $seed \
          --out-jsonl "$OUT/o_$2_$seed.jsonl"
      done
    done
    wait
    cat "$OUT"/o_*.jsonl > "$OUT/table12_lm_seeds12.jsonl" 2>/dev/null && rm -f "$OUT"/o_*.jsonl
    grep -h "ppl\|^exit" "$OUT"/o_*.log; tar czf "$OUT/logs_o.tgz" -C "$OUT" $(cd "$OUT" && ls o_*.log) && rm -f "$OUT"/o_*.log ;;
  K)
    export OMP_NUM_THREADS=2
    for seed in 1 2; do
      for method in hywia element1 flap; do
        for gpu_ratio in "0 0.2" "1 0.5"; do
          set -- $gpu_ratio
          part "$1" "k_$2_${method}_$seed" 560 python bench/recovery.py --device cuda --ratios "$2" --methods $method \
            --objectives distill,lm --mc val paper --limit 1000 --recipe-from "$SWEEP" --recipe micro_batch_size=8 --skip-dense \
            --seed $seed --out-jsonl "$OUT/k_$2_${method}_$seed.jsonl"
        done
      done
    done
    wait
    cat "$OUT"/k_*.jsonl > "$OUT/table12_seeds12.jsonl" 2>/dev/null && rm -f "$OUT"/k_*.jsonl
    grep -h "^exit" "$OUT"/k_*.log; tar czf "$OUT/logs_k.tgz" -C "$OUT" $(cd "$OUT" && ls k_*.log) && rm -f "$OUT"/k_*.log ;;
esac
tail -n 25 "$OUT"/*.log
