# Sourced by the GPU scripts that feed the step from the real loader (gpu_run.sh, gpu_fed.sh):
# builds synthetic shards like prepared VGGSound/Kinetics clips (340x256 px, 30 fps, 10 s, 64
# clips) in "$work/shards" on all cores, logging to "$logs/prep.log"; needs $work and $logs.
# data_prep options in the array prep_args, if set (e.g. --audio-codec wav).
cat >"$work/gen.py" <<'PY'
import os, sys
from avssl.data.synthetic import generate
if __name__ == "__main__":  # the generator's worker processes import this file
    generate(sys.argv[1], num_classes=4, clips_per_class=16, fps=30, size=(340, 256),
             min_duration=10.0, max_duration=10.0, no_audio_fraction=0.0, alt_fps_fraction=0.0,
             alt_size_fraction=0.0, workers=len(os.sched_getaffinity(0)))
PY
python "$work/gen.py" "$work/raw" >"$logs/prep.log" 2>&1 &&
python -m data_prep --dataset synthetic --root "$work/raw" --out "$work/shards" \
  --workers "$(nproc)" --no-progress ${prep_args[@]+"${prep_args[@]}"} >>"$logs/prep.log" 2>&1 || echo "shard preparation failed"
