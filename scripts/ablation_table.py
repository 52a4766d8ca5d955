"""Markdown table of CamVid training runs: the last validation of each run's log.jsonl.

    python scripts/ablation_table.py runs/ablate-ref runs/ablate-no-class-weights ...
    python scripts/ablation_table.py --reference runs/ablate-ref runs/ablate-*

Prints, per run, the final val pixel accuracy, mean accuracy, mean IU (with the change
against ``--reference``), the mean IU with flip TTA where the run folder holds a
``val-flip.json`` from ``fcnseg eval --model RUN/best.safetensors ... --flip --json
RUN/val-flip.json``, and the IoU of every class, in percent.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist"]


def log_rows(run: Path) -> list[dict]:
    """The rows of a run's ``log.jsonl`` (``fcnseg train`` writes one JSON object per line)."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def last_val(run: Path) -> dict:
    rows = log_rows(run)
    vals = [r for r in rows if r.get("type") == "val"]
    if not vals:
        raise SystemExit(f"{run}: no validation in its log.jsonl yet")
    return vals[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--reference", type=Path, default=None, help="run the changes are measured against")
    args = ap.parse_args()
    ref = last_val(args.reference)["mean_iou"] if args.reference else None
    head = ["run", "epoch", "pixel acc", "mean acc", "mean IU", "change", "flip TTA"] + CLASSES
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    seen = set()
    for run in ([args.reference] if args.reference else []) + args.runs:
        if run.resolve() in seen:
            continue
        seen.add(run.resolve())
        v = last_val(run)
        change = f"{100 * (v['mean_iou'] - ref):+.1f}" if ref is not None else ""
        flip_file = run / "val-flip.json"
        flip = f"{100 * json.loads(flip_file.read_text())['mean_iou']:.1f}" if flip_file.is_file() else "-"
        cells = [run.name, str(v["epoch"]), f"{100 * v['pixel_acc']:.1f}", f"{100 * v['mean_acc']:.1f}",
                 f"**{100 * v['mean_iou']:.1f}**", change, flip] + [f"{100 * x:.1f}" for x in v["iou"]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
