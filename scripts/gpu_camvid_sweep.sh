#!/usr/bin/env bash
# Issue 15 on one GPU (H100/H200): the held-out-drive recipe sweep, and the final CamVid model,
# each as one prepared device run. Prepare here first: `bash scripts/gpu_pack.sh` (CamVid copy
# and trunk weights into the git-ignored gpu-carry/, which the run must carry).
#
#   sweep: one row per (fold, variant): scripts/camvid_ablation.sh VARIANT trained on the fold's
#          two other drives for EPOCHS epochs, scored on the held-out drive (its last validation
#          row: the final weights, never a best-of-fold pick) and on CamVid val (`fcnseg eval`).
#            device run(command="bash scripts/gpu_camvid_sweep.sh sweep", carry=["gpu-carry"], timeout_s=590)
#          env: FOLDS ("0006R0 0001TP"), VARIANTS ("ref photometric lite2 scale-wide ohem lovasz"),
#               SEEDS ("0": one run per seed; the seed spread is what a 1-2 point ingredient is judged against),
#               EPOCHS (20), BUDGET_S (500: no run starts after this many seconds)
#   final: stage 1 of configs/camvid-fcn8s-lite0.yaml with MODEL (fcn8s_lite0) and RECIPE (extra
#          stage-1 train options) on SPLIT (trainval), EPOCHS (120) epochs, then the full-resolution
#          stage 2 (configs/camvid-fcn8s-lite0-finetune.yaml, FT_EPOCHS (16), FT_RECIPE), shipped as
#          $OUT/NAME.safetensors (fp16; both stages' recipes in its metadata) with its logs.
#            device run(command="NAME=camvid-fcn8s-lite2 MODEL=fcn8s_lite2 bash scripts/gpu_camvid_sweep.sh final", ...)
#   --dry-run (either mode, on this CPU): 2 steps per run, to check the script before device time.
#
# Results come back in $OUT (at most 8 files): sweep.jsonl (one JSON row per run), sweep.log; or
# final.log, stage1-log.jsonl, stage2-log.jsonl, NAME.safetensors, val.json.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?mode: sweep | final}
dry=${2:-}
out=${OUT:-/tmp/gpu-camvid}
mkdir -p "$out"
py=${PYTHON:-python3}
data=gpu-carry/camvid
[[ -d $data ]] || data=../shared/data/camvid
export PYTHONPATH="$PWD/gpu-carry/pkgs:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FCNSEG="$py -m fcnseg.cli.main"
if [[ $dry == --dry-run ]]; then
  speed=(--device cpu --workers 0 --max-iters 2 --threads 2)
  EPOCHS=${EPOCHS:-1} FT_EPOCHS=${FT_EPOCHS:-1}
else
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  speed=(--device cuda --amp bf16 --channels-last true --workers 14 --deterministic false)
fi
common=(--data-root "$data" --progress false --checkpoint-every 1000 "${speed[@]}")
start=$SECONDS

eval_val() {  # weights -> JSON scores on CamVid val (per drive)
  $FCNSEG eval --model "$1" --dataset camvid --root "$data" --split val --json "$2" --quiet \
    --per-sequence --workers 4 ${dry:+--limit 4} >/dev/null
}

if [[ $mode == sweep ]]; then
  : > "$out/sweep.jsonl"
  for seed in ${SEEDS:-0}; do
  for fold in ${FOLDS:-0006R0 0001TP}; do
    for variant in ${VARIANTS:-ref photometric lite2 scale-wide ohem lovasz}; do
      if (( SECONDS - start > ${BUDGET_S:-500} )); then
        echo "{\"fold\": \"$fold\", \"variant\": \"$variant\", \"seed\": $seed, \"skipped\": \"time budget\"}" >> "$out/sweep.jsonl"
        continue
      fi
      run=runs/gpu-$fold-$variant-seed$seed t0=$SECONDS
      bash scripts/camvid_ablation.sh "$variant" "${common[@]}" --epochs "${EPOCHS:-20}" --val-every 0 \
        --train-split "train-minus-$fold" --val-split "train-only-$fold" --run-dir "$run" --overwrite --seed "$seed" \
        >> "$out/sweep.log" 2>&1 || { echo "{\"fold\": \"$fold\", \"variant\": \"$variant\", \"seed\": $seed, \"failed\": true}" >> "$out/sweep.jsonl"; continue; }
      eval_val "$run/final.safetensors" "$run/val.json" 2>> "$out/sweep.log"
      $py - "$run" "$fold" "$variant" $((SECONDS - t0)) "$seed" >> "$out/sweep.jsonl" <<'PY'
import json, sys
from pathlib import Path
run, fold, variant, wall, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
held = [r for r in rows if r["type"] == "val"][-1]
speed = [r["img_per_s"] for r in rows if r["type"] == "train"]
val = json.loads((run / "val.json").read_text()) if (run / "val.json").exists() else {}
print(json.dumps({"fold": fold, "variant": variant, "seed": seed, "step": held["step"], "wall_s": wall,
                  "img_per_s": round(sorted(speed)[len(speed) // 2], 1) if speed else None,
                  "heldout": {k: held[k] for k in ("mean_iou", "pixel_acc", "mean_acc")}, "heldout_iou": held["iou"],
                  "val": {k: val.get(k) for k in ("mean_iou", "pixel_acc", "mean_acc")}}))
PY
      tail -1 "$out/sweep.jsonl"
    done
  done
  done
elif [[ $mode == final ]]; then
  name=${NAME:-camvid-fcn8s-lite0}
  s1=runs/final-$name s2=runs/final-$name-ft
  # RECIPE / FT_RECIPE are lists of options (word splitting intended)
  $FCNSEG train configs/camvid-fcn8s-lite0.yaml "${common[@]}" --train-split "${SPLIT:-trainval}" --val-split val \
    --epochs "${EPOCHS:-120}" --val-every 10 --run-dir "$s1" --overwrite --model "${MODEL:-fcn8s_lite0}" \
    ${RECIPE:-} 2>&1 | tee "$out/final.log"
  $FCNSEG train configs/camvid-fcn8s-lite0-finetune.yaml "${common[@]}" --train-split "${SPLIT:-trainval}" \
    --val-split val --epochs "${FT_EPOCHS:-16}" --val-every 4 --run-dir "$s2" --overwrite \
    --init-from "$s1/final.safetensors" --model "${MODEL:-fcn8s_lite0}" ${FT_RECIPE:-} 2>&1 | tee -a "$out/final.log"
  cp "$s1/log.jsonl" "$out/stage1-log.jsonl"; cp "$s2/log.jsonl" "$out/stage2-log.jsonl"
  $py scripts/ship_model.py "$s2" "$name" --weights final.safetensors --out "$out/$name.safetensors" \
    --stage1 "$s1/final.safetensors" 2>&1 | tee -a "$out/final.log"
  eval_val "$out/$name.safetensors" "$out/val.json" 2>&1 | tee -a "$out/final.log"
else
  echo "unknown mode: $mode (sweep | final)" >&2; exit 2
fi
echo "gpu_camvid_sweep $mode: $((SECONDS - start)) s"
