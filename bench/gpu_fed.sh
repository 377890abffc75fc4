#!/usr/bin/env bash
# GPU run (issue 8): the compiled CAV-MAE step fed by the real loader on all cores, with the
# fbank computed in the loader workers and on the GPU after the transfer (fbank_compute), one
# after the other in the same run; one worker's rate in this process for both before.
# Usage on a GPU machine (repo root): bash bench/gpu_fed.sh [LOG_DIR]   (~4 minutes)
# SIZE=tiny DEVICE=cpu BATCH=4 runs the same sequence on a CPU (a dry run).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, common (CAV-MAE options), env.log
work=$(mktemp -d)
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh"
if [ -f "$work/shards/manifest.json" ]; then
  timeout 60 python bench/loader.py --data "$work/shards" --frames 1 --clips 60 2>&1 \
    | grep "^\[bench" | tee "$logs/loader.log"
  for fbank in loader device; do
    timeout 150 python bench/step.py "${common[@]}" --steps 10 --compile blocks --variants fast \
      --data "$work/shards" --workers "$(nproc)" --fbank "$fbank" 2>&1 | grep -v "^#   \|Warn"
  done | tee "$logs/step_fed.log"
fi
rm -rf "$work"
