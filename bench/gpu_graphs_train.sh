#!/usr/bin/env bash
# GPU run (issue 8): `make pretrain` with compile: graphs (every transformer block compiled and
# replayed as a CUDA graph, each step marked) beside compile: blocks, through Lightning: MAViL at
# the demo's sizes (training steps and the image logger), XDC (its clustering pass runs the
# encoders outside the steps) and XKD (EMA teachers updated in place between replays); 40 steps
# each on synthetic shards, then the first and last logged loss and samples/s of every run.
# Usage on a GPU machine (repo root): bash bench/gpu_graphs_train.sh [LOG_DIR]   (<= 10 minutes)
# RUNS="mavil graphs,xdc graphs" picks runs; LIMIT (seconds per run, default 150) bounds each:
# a cold compile of MAViL's 30 blocks with graphs took over 50 s on an H200. LightningCLI needs
# jsonargparse (with docstring_parser and typeshed_client), which a bare GPU machine may lack.
# DEVICE=cpu runs the same sequence on a CPU (a dry run: no graphs there, blocks compiled).
set -u
# shellcheck source=bench/gpu_cavmae_env.sh
source "$(dirname "$0")/gpu_cavmae_env.sh" "$@"  # logs, device, env.log
work=$(mktemp -d)
# shellcheck source=bench/gpu_shards.sh
source "$(dirname "$0")/gpu_shards.sh"
accel=$([ "$device" = cpu ] && echo cpu || echo gpu)
steps=${STEPS:-40}
runs=()
IFS=, read -ra todo <<<"${RUNS:-mavil graphs,mavil blocks,xdc graphs,xkd graphs}"
for run in "${todo[@]}"; do
  read -r recipe mode <<<"$run"
  # the demo's config files for this recipe, as make demo adds them (avssl.demo.overlays)
  read -ra demo <<<"$(python -c "import sys; from avssl.demo import overlays
print(' '.join('--config ' + p for p in overlays(sys.argv[1])))" "$recipe")"
  id="graphs-check-$mode"
  rm -rf "runs/$recipe/$id"
  AVSSL_RUN_ID=$id timeout "${LIMIT:-150}" python -m avssl.cli pretrain --recipe "$recipe" \
    --data "$work/shards" -- "${demo[@]}" \
    --trainer.accelerator "$accel" --trainer.max_steps "$steps" --trainer.log_every_n_steps 10 \
    --trainer.enable_progress_bar false --images.every_n_steps 20 \
    --model.init_args.compile "$mode" --data.init_args.num_workers 4 \
    --data.init_args.batch_size 32 >"$logs/$recipe-$mode.log" 2>&1
  echo "[graphs] $recipe compile $mode: exit $? ($(grep -ci "error\|traceback" \
    "$logs/$recipe-$mode.log") lines naming an error)"
  grep -i "cudagraph" "$logs/$recipe-$mode.log" | sort | uniq -c | head -5
  runs+=("runs/$recipe/$id")
done
python bench/tb_scalars.py "${runs[@]}"
rm -rf "$work" "${runs[@]}"
