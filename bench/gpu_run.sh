#!/usr/bin/env bash
# One-shot GPU benchmark run (issue 8): the training steps at the reference configurations,
# eager (fast vs the fp32 baseline) and with every transformer block compiled (what an
# objective's `compile: blocks` does), then the step fed by the real loader from synthetic shards
# built here (340x256 px, 30 fps, 10 s clips, like prepared VGGSound/Kinetics clips).
# Usage on a GPU machine (repo root): bash bench/gpu_run.sh [LOG_DIR]
# SIZE=tiny DEVICE=cpu STEPS=2 runs the same sequence in minutes on a CPU (a dry run).
set -u
logs=${1:-${OUT:-/tmp}}
size=${SIZE:-base}
device=${DEVICE:-cuda}
steps=${STEPS:-20}
work=$(mktemp -d)
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  python -c "import os, torch; print('torch', torch.__version__, 'cpus', len(os.sched_getaffinity(0)))"
  df -h /dev/shm | tail -1; } 2>&1 | tee "$logs/env.log"

# shards for the loader-fed run, built first so that nothing else runs beside the timings
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh"

timeout 200 python bench/step.py --size "$size" --device "$device" --steps "$steps" \
  2>&1 | tee "$logs/step_eager.log"
timeout 240 python bench/step.py --size "$size" --device "$device" --steps "$steps" \
  --compile blocks --variants fast 2>&1 | tee "$logs/step_blocks.log"
if [ -f "$work/shards/manifest.json" ]; then
  # one worker's rate in this process (decode + transforms, no inter-process transfer)
  for frames in 1 16; do
    timeout 40 python bench/loader.py --data "$work/shards" --frames "$frames" --clips 40
  done 2>&1 | grep "^\[bench" | tee "$logs/loader.log"
  timeout 150 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae,videomae --data "$work/shards" \
    --workers "$(nproc)" 2>&1 | tee "$logs/step_data.log"
fi
rm -rf "$work"
