#!/usr/bin/env bash
# One-shot GPU benchmark run (issue 8): eager and compiled training steps at the reference
# configurations, then the step fed by the real loader from synthetic shards.
# Usage on a GPU machine (repo root): bash bench/gpu_run.sh [SHARDS_DIR] [LOG_DIR]
set -u
shards=${1:-}
logs=${2:-${OUT:-/tmp}}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python bench/step.py --steps 20 2>&1 | tee "$logs/step_eager.log"
python bench/step.py --compile --configs cavmae,videomae,mavil --variants fast --steps 20 \
  2>&1 | tee "$logs/step_compile.log"
if [ -n "$shards" ]; then
  python bench/step.py --configs cavmae,videomae --variants fast --steps 10 --data "$shards" \
    --workers "$(nproc)" 2>&1 | tee "$logs/step_data.log"
fi
