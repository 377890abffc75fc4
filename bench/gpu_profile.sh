#!/usr/bin/env bash
# GPU run (issue 8): where the CAV-MAE step's time goes. Kernel micro-benchmarks (attention of
# each SDPA backend, matrix products at the step's shapes), a kernel profile of the compiled
# step, then the step timed with other attention kernels and with whole-stack compilation, the
# current best (compiled blocks, PyTorch's attention choice) timed first as the baseline.
# Usage on a GPU machine (repo root): bash bench/gpu_profile.sh [LOG_DIR]
# SIZE=tiny DEVICE=cpu runs the same sequence on a CPU in a minute (a dry run).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, common (CAV-MAE options), env.log
timeout 90 python bench/profile_step.py --kernels "${common[@]}" 2>&1 | tee "$logs/kernels.log"
timeout 150 python bench/profile_step.py --profile --compile blocks --top 30 "${common[@]}" 2>&1 \
  | grep -v "^USDT\|SyncActivity" | tee "$logs/profile.log"
step() { timeout "$1" python bench/step.py --variants fast --steps 20 "${common[@]}" "${@:2}" 2>&1 | grep -v "^#   "; }
{ step 100 --compile blocks
  step 100 --compile blocks --sdpa cudnn
  step 100 --compile blocks --sdpa efficient
  step 150 --compile stacks; } | tee "$logs/variants.log"
