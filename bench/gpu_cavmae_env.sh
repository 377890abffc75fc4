# Sourced by the CAV-MAE GPU scripts (gpu_profile.sh, gpu_fusion.sh): log folder ($1, else
# $OUT, else /tmp), the step options they share in "${common[@]}" (SIZE, DEVICE, BATCH), the
# import path, and the card's name in env.log.
logs=${1:-${OUT:-/tmp}}
mkdir -p "$logs"
size=${SIZE:-base}
device=${DEVICE:-cuda}
batch=${BATCH:-256}
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
common=(--size "$size" --device "$device" --configs cavmae --batch "$batch")
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true; } 2>&1 | tee "$logs/env.log"
