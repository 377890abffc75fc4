#!/usr/bin/env bash
# GPU run (issue 8): the compiled CAV-MAE and VideoMAE steps fed by the real loader on all
# cores with the fbank, colour jitter and normalisation on the GPU after the transfer
# (features_on device): CAV-MAE from clips prepared with WAV audio (data_prep --audio-codec
# wav: read without decoding) and JPEG frames at 1 fps (--jpeg-fps 1), then with WAV audio and
# its frame from the mp4's keyframes (--keyframe-starts), both steps with the defaults, and the
# VideoMAE step with repeated sampling (4 entries per decoded clip). Before them: CAV-MAE's
# sample in one worker and through DataLoaders of 1 to all cores' workers (how the loader
# scales); after them one worker's VideoMAE sample. The VideoMAE step loads video only
# (bench/step.py: AVDataModule(modalities=["video"])).
# Usage on a GPU machine (repo root): bash bench/gpu_fed.sh [LOG_DIR]   (~5 minutes on an H200)
# Its run of 2026-11-28 (bench/results/h200-2026-11-28-fed.md) had the workers at the training
# process's niceness; step.py now runs them at AVDataModule's GPU default, niceness 10.
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
  # and with the video as JPEG frames at 1 fps (data_prep --jpeg-fps 1: CAV-MAE's frames)
  python -m data_prep --dataset synthetic --root "$work/raw" --out "$work/shards-jpeg" \
    --workers "$(nproc)" --no-progress --audio-codec wav --jpeg-fps 1 >>"$logs/prep.log" 2>&1
  # CAV-MAE's sample (one frame + 10 s, WAV shards): one worker's rates, then DataLoaders of 1
  # to all workers (how the loader scales with the cores)
  timeout 120 python bench/loader.py --data "$work/shards-wav" --frames 1 --clips 40 \
    --dataloader --scan "1,4,8,$(nproc)" 2>&1 | grep "^\[bench" | tee "$logs/loader.log"
  # most important first (the lines are logged as they come, so a time-out keeps the earlier):
  # CAV-MAE fed with every lever (JPEG frames at 1 fps, WAV audio, features on the GPU), then
  # from the mp4's keyframes with WAV audio
  timeout 100 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae --data "$work/shards-jpeg" \
    --workers "$(nproc)" --features device 2>&1 \
    | grep -v "^#   \|Warn\|^W1" | tee "$logs/step_fed.log"
  timeout 100 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae --data "$work/shards-wav" \
    --workers "$(nproc)" --features device --keyframe-starts 2>&1 \
    | grep -v "^#   \|Warn\|^W1" | tee -a "$logs/step_fed.log"
  # both steps with the defaults (FLAC, random starts; features on the GPU, the VideoMAE step
  # video only). The features in the loader workers: the H200 run of 2026-11-26 (69 % wait)
  timeout 200 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs cavmae,videomae --data "$work/shards" \
    --workers "$(nproc)" --features device 2>&1 | grep -v "^#   \|Warn\|^W1" \
    | tee -a "$logs/step_fed.log"
  # repeated sampling (4 entries per decoded clip) for the reconstruction-only VideoMAE step
  timeout 120 python bench/step.py --size "$size" --device "$device" --steps 10 \
    --compile blocks --variants fast --configs videomae --data "$work/shards" \
    --workers "$(nproc)" --features device --repeats 4 2>&1 | grep -v "^#   \|Warn\|^W1" \
    | tee -a "$logs/step_fed.log"
  # one worker's rates for the VideoMAE sample (16x4 frames)
  timeout 60 python bench/loader.py --data "$work/shards" --frames 16 --clips 30 2>&1 \
    | grep "^\[bench" | tee -a "$logs/loader.log"
fi
rm -rf "$work"
