#!/usr/bin/env bash
# Second GPU run (issue 8): how the fast step scales with the batch, eager and with compiled
# blocks, to tell launch-bound from GPU-bound configurations. Usage: bash bench/gpu_batch.sh
set -u
export PYTHONPATH=src:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run() { timeout "$1" python bench/step.py --variants fast --steps 20 "${@:2}" 2>&1 | grep -v "^#   "; }
run 100 --configs cavmae --batch 256 --compile blocks
run 50 --configs mavil --batch 128
run 100 --configs mavil --batch 128 --compile blocks
run 90 --configs cavmae --batch 512 --compile blocks
run 80 --configs videomae --batch 128 --compile blocks
run 50 --configs cavmae --batch 256
