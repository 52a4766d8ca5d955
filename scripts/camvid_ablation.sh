#!/usr/bin/env bash
# Ingredient ablation of the shipped CamVid recipe (issue 5): each variant is stage 1 of
# configs/camvid-fcn8s-lite0.yaml shortened to 10 epochs with ONE ingredient changed.
# Short runs because a CPU affords them; the 40-epoch stage-1 run is the schedule ablation.
#
#   bash scripts/camvid_ablation.sh VARIANT [extra fcnseg-train options]
#   VARIANT: ref | ref-seed1 | no-class-weights | no-scale-aug | bilinear-skip | no-skip | photometric
#            | lite1 | lite2 (same recipe, stronger ImageNet trunk)
#            | scale-wide (scales 0.5-2.0) | full-res (whole 360x480 images: no crop, no scaling) | ohem | lovasz
#            | lite2-photometric (two ingredients: the recipe chosen for the shipped camvid-fcn8s-lite2)
#            | lite2-photometric-ohem | lite2-photometric-lovasz (the shipped recipe plus one loss ingredient)
#            | lite2-photometric-up15 (the shipped recipe on images scaled 1.5x more: scales 1.125-2.25;
#              evaluate with --tta scales=1.5, the net seeing every image 1.5x larger)
#            | lite2-photometric-wide (the shipped recipe with scales 0.75-2.25: the recipe's range and up15's)
#            | lite2-photometric-freeze-bn (the shipped recipe with the trunk's BatchNorm statistics kept at ImageNet's)
#            | lite2-photometric-ema (the shipped recipe validated and shipped as the running average of its
#              weights, decay 0.99: a horizon of ~100 of the run's 200-380 steps)
#            | lite2-photometric-up15-ema (up15 with the weight average of -ema: same seed, same raw
#              trajectory as up15, so the pair differs only in the weights served)
#            | lite2-photometric-mfb (the shipped recipe with full median-frequency class weights, not their square root)
#            | lite2-photometric-up20 (up15 one step further: scales 1.5-3.0; evaluate with --tta scales=2.0,
#              the net seeing 360x480 frames at CamVid's original 720x960)
#            | lite2-photometric-4s (the shipped recipe on FCN-4s: one more skip, from the stride-4 stage)
#            | lite2-photometric-4s-up15 (up15 on FCN-4s; evaluate with --tta scales=1.5)
#            | lite2-photometric-up15-crop384 (up15 with 384x512 crops, 1.78x the pixels per step: at 1.5x
#              a 288x384 crop sees 28 % of a frame's area, a 384x512 one 51 %, what 288x384 saw at the
#              recipe's scale 1.125: the context up15 took away)
#
# Held-out-sequence fold (docs/results.md): add e.g.
#   --train-split train-minus-0006R0 --val-split train-only-0006R0 --run-dir runs/heldout-0006R0-VARIANT
#
# Runs land in runs/ablate-VARIANT; resume an interrupted one with
#   fcnseg train --resume runs/ablate-VARIANT
# and read the result with `fcnseg plot` or the last "val" line of its log.jsonl.
set -euo pipefail
variant=${1:?variant: ref | ref-seed1 | no-class-weights | no-scale-aug | bilinear-skip | no-skip | photometric | lite1 | lite2 | scale-wide | full-res | ohem | lovasz | lite2-photometric | lite2-photometric-ohem | lite2-photometric-lovasz | lite2-photometric-up15 | lite2-photometric-wide | lite2-photometric-freeze-bn | lite2-photometric-ema | lite2-photometric-up15-ema | lite2-photometric-mfb | lite2-photometric-up20 | lite2-photometric-up15-crop384 | lite2-photometric-4s | lite2-photometric-4s-up15}
shift
photometric='{brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.05, gamma: 0.3, blur_p: 0.2, blur_sigma: [0.5, 1.5]}'
case "$variant" in
  ref)              change=() ;;
  ref-seed1)        change=(--seed 1) ;;
  no-class-weights) change=(--class-weights none) ;;
  no-scale-aug)     change=(--scale-range none) ;;
  bilinear-skip)    change=(--model-options '{learnable_upsampling: false}') ;;
  no-skip)          change=(--model fcn32s_lite0 --model-options '{}') ;;
  photometric)      change=(--photometric "$photometric") ;;
  lite1)            change=(--model fcn8s_lite1) ;;
  lite2)            change=(--model fcn8s_lite2) ;;
  scale-wide)       change=(--scale-range '[0.5, 2.0]') ;;
  full-res)         change=(--crop-size none --scale-range none) ;;
  ohem)             change=(--ohem-keep 0.3) ;;
  lovasz)           change=(--lovasz-weight 0.5) ;;
  lite2-photometric) change=(--model fcn8s_lite2 --photometric "$photometric") ;;
  lite2-photometric-ohem)   change=(--model fcn8s_lite2 --photometric "$photometric" --ohem-keep 0.3) ;;
  lite2-photometric-lovasz) change=(--model fcn8s_lite2 --photometric "$photometric" --lovasz-weight 0.5) ;;
  lite2-photometric-up15)   change=(--model fcn8s_lite2 --photometric "$photometric" --scale-range '[1.125, 2.25]') ;;
  lite2-photometric-wide)   change=(--model fcn8s_lite2 --photometric "$photometric" --scale-range '[0.75, 2.25]') ;;
  lite2-photometric-freeze-bn) change=(--model fcn8s_lite2 --photometric "$photometric" --freeze-bn true) ;;
  lite2-photometric-ema)    change=(--model fcn8s_lite2 --photometric "$photometric" --ema-decay 0.99) ;;
  lite2-photometric-up15-ema) change=(--model fcn8s_lite2 --photometric "$photometric" --scale-range '[1.125, 2.25]' --ema-decay 0.99) ;;
  lite2-photometric-mfb)    change=(--model fcn8s_lite2 --photometric "$photometric" --class-weights median_freq) ;;
  lite2-photometric-4s)     change=(--model fcn4s_lite2 --photometric "$photometric") ;;
  lite2-photometric-4s-up15) change=(--model fcn4s_lite2 --photometric "$photometric" --scale-range '[1.125, 2.25]') ;;
  lite2-photometric-up20)   change=(--model fcn8s_lite2 --photometric "$photometric" --scale-range '[1.5, 3.0]') ;;
  lite2-photometric-up15-crop384) change=(--model fcn8s_lite2 --photometric "$photometric" --scale-range '[1.125, 2.25]' --crop-size '[384, 512]') ;;
  *) echo "unknown variant: $variant" >&2; exit 2 ;;
esac
exec ${FCNSEG:-fcnseg} train configs/camvid-fcn8s-lite0.yaml --epochs 10 --val-every 5 \
  --run-dir "runs/ablate-$variant" "${change[@]}" "$@"
