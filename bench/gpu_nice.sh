#!/usr/bin/env bash
# GPU run (issue 8): the loader-fed CAV-MAE step (WAV audio, JPEG frames at 1 fps, features on
# the GPU) with all cores' workers at niceness 0 and 10 (AVDataModule.worker_nice), and with 8
# workers at niceness 10: whether the process that launches the kernels is kept waiting for a
# core. Usage on a GPU machine (repo root): bash bench/gpu_nice.sh [LOG_DIR]   (~3 minutes)
# SIZE=tiny DEVICE=cpu runs the same sequence on a CPU (a dry run).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, size, device, env.log
work=$(mktemp -d)
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh"
python -m data_prep --dataset synthetic --root "$work/raw" --out "$work/shards-jpeg" \
  --workers "$(nproc)" --no-progress --audio-codec wav --jpeg-fps 1 >>"$logs/prep.log" 2>&1
for workers_nice in "$(nproc) 0" "$(nproc) 10" "8 10"; do
  read -r workers nice <<<"$workers_nice"
  timeout 100 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae --data "$work/shards-jpeg" \
    --workers "$workers" --worker-nice "$nice" --features device 2>&1 \
    | grep -v "^#   \|Warn\|^W1" | tee -a "$logs/nice.log"
done
rm -rf "$work"
