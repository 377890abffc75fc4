#!/usr/bin/env bash
# GPU run (issue 8): the compiled CAV-MAE and VideoMAE steps fed by the real loader on all
# cores with the fbank, colour jitter and normalisation on the GPU after the transfer
# (features_on device), then the CAV-MAE step with its frame on a keyframe (--keyframe-starts),
# the same from the clips prepared with their audio as WAV (data_prep --audio-codec wav: read
# without decoding), and the VideoMAE step with repeated sampling (4 entries per decoded clip).
# Before them: one worker's rates in this process, and CAV-MAE's sample through DataLoaders of
# 1 to all cores' workers (how the loader scales). The VideoMAE step loads video only
# (bench/step.py: AVDataModule(modalities=["video"])).
# Usage on a GPU machine (repo root): bash bench/gpu_fed.sh [LOG_DIR]   (~8 minutes)
# SIZE=tiny DEVICE=cpu runs the same sequence on a CPU (a dry run). Batches: the fast defaults
# (CAV-MAE 128, VideoMAE 64), as in gpu_run.sh.
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, common (CAV-MAE options), env.log
work=$(mktemp -d)
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh"
# the cores the loader has: hyperthreads share a core's decode throughput
{ lscpu | grep -E "^Model name|^CPU\(s\)|^Thread|^Core|^Socket" || true; } 2>&1 | tee -a "$logs/env.log"
if [ -f "$work/shards/manifest.json" ]; then
  # the same clips with WAV audio: CAV-MAE's 10 s window is then read, not decoded
  python -m data_prep --dataset synthetic --root "$work/raw" --out "$work/shards-wav" \
    --workers "$(nproc)" --no-progress --audio-codec wav >>"$logs/prep.log" 2>&1
  # one worker's rates; for CAV-MAE's sample also DataLoaders of 1 to all workers (WAV shards)
  { timeout 150 python bench/loader.py --data "$work/shards-wav" --frames 1 --clips 40 \
      --dataloader --scan "1,4,8,$(nproc)"
    timeout 90 python bench/loader.py --data "$work/shards" --frames 16 --clips 40 --dataloader
  } 2>&1 | grep "^\[bench" | tee "$logs/loader.log"
  # (the features computed in the loader workers instead: the H200 run of 2026-11-26, which
  # waited for data 69 % of the time)
  timeout 200 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae,videomae --data "$work/shards" \
    --workers "$(nproc)" --features device 2>&1 | grep -v "^#   \|Warn\|^W1" \
    | tee "$logs/step_fed.log"
  # the CAV-MAE step fed with its frame taken from the shards' keyframes (CAV-MAE's sampling:
  # one of the frames extracted at 1 fps); a one-frame clip then decodes one frame
  timeout 100 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae --data "$work/shards" \
    --workers "$(nproc)" --features device --keyframe-starts 2>&1 | grep -v "^#   \|Warn\|^W1" \
    | tee -a "$logs/step_fed.log"
  # the same clips with WAV audio, frames on keyframes: every lever for CAV-MAE's sample
  timeout 100 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae --data "$work/shards-wav" \
    --workers "$(nproc)" --features device --keyframe-starts 2>&1 \
    | grep -v "^#   \|Warn\|^W1" | tee -a "$logs/step_fed.log"
  # repeated sampling (4 entries per decoded clip) for the reconstruction-only VideoMAE step
  timeout 120 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs videomae --data "$work/shards" \
    --workers "$(nproc)" --features device --repeats 4 2>&1 | grep -v "^#   \|Warn\|^W1" \
    | tee -a "$logs/step_fed.log"
fi
rm -rf "$work"
