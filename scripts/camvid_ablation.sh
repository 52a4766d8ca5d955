#!/usr/bin/env bash
# Ingredient ablation of the shipped CamVid recipe (issue 5): each variant is stage 1 of
# configs/camvid-fcn8s-lite0.yaml shortened to 10 epochs with ONE ingredient changed.
# Short runs because a CPU affords them; the 40-epoch stage-1 run is the schedule ablation.
#
#   bash scripts/camvid_ablation.sh VARIANT [extra fcnseg-train options]
#   VARIANT: ref | ref-seed1 | no-class-weights | no-scale-aug | bilinear-skip | no-skip
#
# Runs land in runs/ablate-VARIANT; resume an interrupted one with
#   fcnseg train --resume runs/ablate-VARIANT
# and read the result with `fcnseg plot` or the last "val" line of its log.jsonl.
set -euo pipefail
variant=${1:?variant: ref | ref-seed1 | no-class-weights | no-scale-aug | bilinear-skip | no-skip}
shift
case "$variant" in
  ref)              change=() ;;
  ref-seed1)        change=(--seed 1) ;;
  no-class-weights) change=(--class-weights none) ;;
  no-scale-aug)     change=(--scale-range none) ;;
  bilinear-skip)    change=(--model-options '{learnable_upsampling: false}') ;;
  no-skip)          change=(--model fcn32s_lite0 --model-options '{}') ;;
  *) echo "unknown variant: $variant" >&2; exit 2 ;;
esac
exec fcnseg train configs/camvid-fcn8s-lite0.yaml --epochs 10 --val-every 5 \
  --run-dir "runs/ablate-$variant" "${change[@]}" "$@"
