"""scripts/heldout_table.py: the fold table and its test-like score, from stand-in run folders."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "heldout_table.py"


def _run_folder(runs: Path, fold: str, variant: str, held: float, val: float, finished: bool = True) -> None:
    run = runs / f"heldout-{fold}-{variant}"
    run.mkdir(parents=True)
    rows = [{"type": "val", "mean_iou": held - 0.1}, {"type": "val", "mean_iou": held}]
    rows += [{"type": "end"}] if finished else []
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "val-s1.json").write_text(json.dumps({"mean_iou": val}))
    (run / "heldout-s1.5.json").write_text(json.dumps({"mean_iou": held + 0.01}))
    (run / "val-s1.5.json").write_text(json.dumps({"mean_iou": val + 0.01}))


def test_test_like_weights_new_and_seen_drives_by_test_frames(tmp_path):
    held = {"0001TP": 0.40, "0006R0": 0.50, "0016E5": 0.60}
    val = {"0001TP": 0.70, "0006R0": 0.80, "0016E5": 0.30}
    for fold in held:
        _run_folder(tmp_path, fold, "v", held[fold], val[fold])
        _run_folder(tmp_path, fold, "unfinished", held[fold], val[fold], finished=fold != "0016E5")
    out = tmp_path / "table.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "v", "v@1.5", "unfinished", "--runs", str(tmp_path),
                          "--json", str(out)], capture_output=True, text=True, check=True)
    table = json.loads(out.read_text())["variants"]
    # new drive: mean of the held-out daylight drives; seen drive: val of the folds training on 0016E5
    expected = (171 * (0.50 + 0.60) / 2 + 62 * (0.80 + 0.70) / 2) / 233
    assert table["v"]["test-like"] == round(100 * expected, 1)
    assert table["v"]["held-out"] == {"0001TP": 40.0, "0006R0": 50.0, "0016E5": 60.0}
    assert table["v"]["mean held-out (3 drives)"] == 50.0
    assert table["v@1.5"]["test-like"] == round(100 * (expected + 0.01), 1)  # read from the scale's files
    # a run still training has no final score: its cells and the test-like score stay empty
    assert table["unfinished"]["held-out"]["0016E5"] is None and table["unfinished"]["test-like"] is None
    assert f"**{100 * expected:.1f}**" in res.stdout.splitlines()[2]
