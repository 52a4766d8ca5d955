#!/usr/bin/env bash
# Train a two-stage CamVid recipe so that it can be stopped at any time and continued by running
# the same command again (each stage resumes from its last checkpoint, written every
# checkpoint_every steps; a finished stage is skipped). For CPU runs longer than a session:
#
#   bash scripts/camvid_train_resumable.sh configs/camvid-fcn8s-lite2-trainval.yaml \
#        configs/camvid-fcn8s-lite2-trainval-finetune.yaml [extra fcnseg-train options]
#
# Stage 2 must read stage 1's final.safetensors (its init_from). Ends with stage 2's
# final.safetensors, to ship with scripts/ship_model.py RUN NAME --weights final.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
fcnseg=${FCNSEG:-fcnseg}
for cfg in "$1" "$2"; do
  run=$(${PYTHON:-python3} -c "import sys; from fcnseg.training import load_config; print(load_config(sys.argv[1]).run_dir)" "$cfg")
  if [[ -f $run/final.safetensors ]]; then
    echo "$cfg: done ($run/final.safetensors)"; continue
  elif [[ -f $run/last.pt ]]; then
    $fcnseg train --resume "$run" --progress false
  else
    $fcnseg train "$cfg" --progress false "${@:3}"
  fi
done
