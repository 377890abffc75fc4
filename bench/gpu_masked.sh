#!/usr/bin/env bash
# GPU run (issue 8): MAViL's full stage-1 step at base size with and without clips missing
# their audio, in the same run. With every clip complete the joint layers take no attention
# mask (SDPA may pick its flash/cuDNN kernels); with 8 of the batch's clips silent they take a
# key mask (SDPA's kernels that accept one), so the line says what a loader batch holding such
# clips costs, and that the masked path runs under bf16 autocast and torch.compile on CUDA.
# Usage on a GPU machine (repo root): bash bench/gpu_masked.sh [LOG_DIR]   (<= 6 minutes)
# SIZE=tiny DEVICE=cpu BATCH=4 runs the same sequence on a CPU (a dry run).
set -u
logs=${1:-${OUT:-/tmp}}
mkdir -p "$logs"
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
common=(--size "${SIZE:-base}" --device "${DEVICE:-cuda}" --configs mavil --variants fast
  --batch "${BATCH:-64}" --steps "${STEPS:-20}" --compile blocks)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; } 2>&1 | tee "$logs/env.log"
b=${BATCH:-64}
for missing in 0 $(( b / 8 > 0 ? b / 8 : 1 )); do
  timeout 170 python bench/step.py "${common[@]}" --without-audio "$missing" 2>&1 \
    | grep -v "^#   cavmae\|^#   videomae\|Warning\|warn(" | sed "s/^/[missing $missing] /"
  echo "[missing $missing] exit ${PIPESTATUS[0]}"
done | tee "$logs/masked.log"
