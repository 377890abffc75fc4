#!/usr/bin/env bash
# GPU run (issue 8): CUDA graphs and FlexAttention for the CAV-MAE step.
# 1. Attention kernels at the step's shapes: FlexAttention's generated kernels beside SDPA's
#    backends (bench/profile_step.py --kernels), while the shards are prepared.
# 2. The unfed step at batch 256, compiled blocks: PyTorch's attention choice (the baseline of
#    this run), then every attention layer as FlexAttention (--sdpa flex).
# 3. The step fed by the real loader (WAV audio, JPEG frames at 1 fps, features on the GPU,
#    batch 128), 8 workers at niceness 10 (the best setting of the last run): compiled blocks as
#    plain kernels, then replayed as CUDA graphs (--compile-mode reduce-overhead: the host issues
#    one graph launch per block instead of every kernel, the lever for a host slowed by busy
#    workers); then the graphs with 16 workers. Each fed line has the step alone before it.
# Usage on a GPU machine (repo root): bash bench/gpu_graphs.sh [LOG_DIR]   (~7 minutes)
# SIZE=tiny DEVICE=cpu runs the same sequence on a CPU (a dry run: the flex lines are refused
# there, and the graphs are not used).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, size, device, common, env.log
{ lscpu | grep -E "^Model name|^CPU\(s\)" || true; } 2>&1 | tee -a "$logs/env.log"
work=$(mktemp -d)
# the shards (WAV audio, JPEG frames at 1 fps) are prepared while the kernels are timed
prep_args=(--audio-codec wav --jpeg-fps 1)
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh" &
timeout 90 python bench/profile_step.py --kernels "${common[@]}" 2>&1 | grep "kernels\]" \
  | tee "$logs/kernels.log"
wait
step() { timeout "$1" python bench/step.py --size "$size" --device "$device" --configs cavmae \
  --variants fast --compile blocks "${@:2}" 2>&1 | grep -v "^#   \|^W1\|Warn\|check_worker"
  echo "[exit ${PIPESTATUS[0]}]"; }
{ step 100 --batch "$batch" --steps 20
  step 120 --batch "$batch" --steps 20 --sdpa flex; } | tee "$logs/unfed.log"
fed=(--data "$work/shards" --features device --steps 10 --worker-nice 10)
{ step 100 "${fed[@]}" --workers 8
  step 120 "${fed[@]}" --workers 8 --compile-mode reduce-overhead
  step 120 "${fed[@]}" --workers "$(nproc)" --compile-mode reduce-overhead; } | tee "$logs/fed.log"
rm -rf "$work"
