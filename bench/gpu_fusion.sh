#!/usr/bin/env bash
# GPU run (issue 8): the kernel-level options the CAV-MAE profile points at.
# 1. FlexAttention's generated kernels against SDPA's backends at the step's attention shapes
#    (the decoder's 16 heads of 32 dims run at 145 TFLOP/s on cuDNN, 328 at head dim 64), and
#    at the decoder's shape FlexAttention with autotuned block sizes (--flex-autotune).
# 2. The step with --compile-mode max-autotune-no-cudagraphs (inductor's own Triton matrix
#    products, which can take GELU as an epilogue, benchmarked against cuBLAS), and with
#    --sdpa flex when FLEX=1 (measured on 2026-11-28: 1,254 against 1,258 samples/s, so not by
#    default) or both (BOTH=1); the current best (compiled blocks, PyTorch's attention choice)
#    first, in the same run, as the baseline.
# Usage on a GPU machine (repo root): bash bench/gpu_fusion.sh [LOG_DIR]
# SIZE=tiny DEVICE=cpu runs the same sequence on a CPU (a dry run: the flex lines are refused
# there, FlexAttention has no CPU backward).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, common (CAV-MAE options), env.log
timeout 180 python bench/profile_step.py --kernels --flex-autotune "${common[@]}" 2>&1 \
  | grep "kernels\]" | tee "$logs/kernels.log"
step() { timeout "$1" python bench/step.py --variants fast --steps 20 "${common[@]}" "${@:2}" 2>&1 \
  | grep -v "^#   \|Warning\|warn("; echo "[exit ${PIPESTATUS[0]}]"; }
# at most ~8.5 minutes in all (one device call may run 10); BOTH=1 adds flex + max-autotune
{ step 90 --compile blocks
  if [ "${FLEX:-0}" = 1 ]; then step 110 --compile blocks --sdpa flex; fi
  step 240 --compile blocks --compile-mode max-autotune-no-cudagraphs
  if [ "${BOTH:-0}" = 1 ]; then
    step 240 --compile blocks --compile-mode max-autotune-no-cudagraphs --sdpa flex
  fi; } | tee "$logs/variants.log"
