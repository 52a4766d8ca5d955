"""Held-out-drive table of CamVid recipe variants, with a test-like summary score.

    python scripts/heldout_table.py lite2-photometric lite2-photometric-up15@1.5 [--evaluate]

For each VARIANT (``@S``: run the net at input scale S, i.e. ``fcnseg eval --tta scales=S``) it
reads the three fold runs ``runs/heldout-FOLD-VARIANT`` written by

    bash scripts/camvid_ablation.sh VARIANT --train-split train-minus-FOLD --val-split train-only-FOLD \\
        --run-dir runs/heldout-FOLD-VARIANT

and prints, per fold, the mean IU on the held-out drive (the final weights: the run's last
validation row at S = 1, else ``RUN/heldout-sS.json``) and on CamVid val (``RUN/val-sS.json``);
``--evaluate`` writes the missing JSON files with ``fcnseg eval``; ``--json FILE`` writes the table
as a JSON object too (what ``scripts/ship_model.py --heldout`` records in a shipped model's card).

Why a test-like score: CamVid test is 171 frames of ``Seq05VD``, a daylight drive in no training
split, and 62 frames of ``0001TP``, the dusk drive whose previous segment *is* in train. A model
trained on train or trainval therefore meets one new daylight drive and one seen drive on test.
The folds measure both: the held-out daylight drives (``0006R0``, ``0016E5``) stand for
``Seq05VD``, and val (the next segment of ``0016E5``, a drive the folds holding out ``0006R0`` and
``0001TP`` train on) for a seen drive's new segment. ``test-like`` weights the two by test's
frame counts: 171/233 x mean(held-out 0006R0, 0016E5) + 62/233 x mean(val of folds 0006R0, 0001TP).
It is an estimate of a *difference* between recipes, not of the test score itself (mean IU does
not add over frames, and the folds train on fewer frames than the final model). The mean over the
three held-out drives (the dusk one included) is printed too: it asks how a recipe copes with a
drive in light it never saw, which test does not ask.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ablation_table import log_rows  # scripts/ is on sys.path when a script in it runs

FOLDS = ("0001TP", "0006R0", "0016E5")
DAYLIGHT_HELDOUT = ("0006R0", "0016E5")  # stand-ins for test's new drive Seq05VD
SEEN_DRIVE_VAL = ("0006R0", "0001TP")  # folds that train on 0016E5: their val is a seen drive's next segment
TEST_FRAMES = {"new": 171, "seen": 62}


def _last_val(run: Path) -> float | None:
    if not (run / "log.jsonl").is_file():
        return None
    rows = log_rows(run)
    if not any(r.get("type") == "end" for r in rows):
        return None  # still training: its last validation is not the final weights'
    vals = [r for r in rows if r.get("type") == "val"]
    return vals[-1]["mean_iou"] if vals else None


def _scored(run: Path, split: str, scale: float, name: str, evaluate: bool, root: str) -> float | None:
    out = run / name
    if not out.is_file() and evaluate and (run / "final.safetensors").is_file():
        cmd = [sys.executable, "-m", "fcnseg.cli.main", "eval", "--model", str(run / "final.safetensors"),
               "--dataset", "camvid", "--root", root, "--split", split, "--quiet", "--json", str(out)]
        if scale != 1:
            cmd += ["--tta", f"scales={scale:g}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["mean_iou"] if out.is_file() else None


def _percent(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 1)


def _cell(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.1f}"


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="VARIANT or VARIANT@SCALE")
    ap.add_argument("--runs", default="runs", help="folder of the runs/heldout-FOLD-VARIANT run folders")
    ap.add_argument("--root", default="../shared/data/camvid", help="CamVid root (for --evaluate)")
    ap.add_argument("--evaluate", action="store_true", help="run fcnseg eval where a score file is missing")
    ap.add_argument("--json", type=Path, help="also write the table to this JSON file (mean IU in percent)")
    args = ap.parse_args()
    table: dict[str, dict] = {}
    head = (["variant"] + [f"held-out {f}" for f in FOLDS] + [f"val ({f} fold)" for f in FOLDS]
            + ["mean held-out (3 drives)", "test-like"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for spec in args.variants:
        variant, _, s = spec.partition("@")
        scale = float(s) if s else 1.0
        tag = f"s{scale:g}"
        held, val = {}, {}
        for fold in FOLDS:
            run = Path(args.runs) / f"heldout-{fold}-{variant}"
            held[fold] = (_last_val(run) if scale == 1 else
                          _scored(run, f"train-only-{fold}", scale, f"heldout-{tag}.json", args.evaluate, args.root))
            val[fold] = _scored(run, "val", scale, f"val-{tag}.json", args.evaluate, args.root)
        new = _mean([held[f] for f in DAYLIGHT_HELDOUT])
        seen = _mean([val[f] for f in SEEN_DRIVE_VAL])
        total = TEST_FRAMES["new"] + TEST_FRAMES["seen"]
        test_like = None if new is None or seen is None else (
            (TEST_FRAMES["new"] * new + TEST_FRAMES["seen"] * seen) / total)

        row = table[spec] = {"held-out": {f: _percent(held[f]) for f in FOLDS},
                             "val": {f: _percent(val[f]) for f in FOLDS},
                             "mean held-out (3 drives)": _percent(_mean(list(held.values()))),
                             "test-like": _percent(test_like)}
        cells = ([spec] + [_cell(row["held-out"][f]) for f in FOLDS] + [_cell(row["val"][f]) for f in FOLDS]
                 + [_cell(row["mean held-out (3 drives)"]), f"**{_cell(row['test-like'])}**"])
        print("| " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "protocol": "10-epoch stage-1 fold runs (runs/heldout-FOLD-VARIANT), final weights; mean IU in percent on "
                        "the held-out drive and on CamVid val; VARIANT@S: the net run at input scale S; test-like = "
                        "171/233 x mean(held-out 0006R0, 0016E5) + 62/233 x mean(val of folds 0006R0, 0001TP) "
                        "(scripts/heldout_table.py, docs/results.md)",
            "variants": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
