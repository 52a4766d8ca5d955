"""Training curves from a run's ``log.jsonl``: loss and validation mean IU to one PNG."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no log.jsonl (is this an fcnseg run folder?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(path.read_text().splitlines()):
                continue  # a line cut by a kill while it was written
            raise UserError(f"{path}:{n}: not a JSON line") from None
    return rows


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw training loss and validation mean IU / pixel accuracy against the step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("fcnseg plot needs matplotlib: pip install 'fcnseg[viz]'") from None
    rows = read_log(run_dir)
    # A resumed run repeats the steps after its last checkpoint: keep the latest row per step.
    train = {r["step"]: r for r in rows if r.get("type") == "train"}
    val = {r["step"]: r for r in rows if r.get("type") == "val"}
    if not train and not val:
        raise UserError(f"{run_dir}: the log has no training or validation rows yet")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = sorted(train)
        ax1.plot(steps, [train[s]["loss"] for s in steps], lw=1)
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax1.grid(alpha=0.3)
    if val:
        steps = sorted(val)
        ax2.plot(steps, [100 * val[s]["mean_iou"] for s in steps], "o-", label="mean IU")
        ax2.plot(steps, [100 * val[s]["pixel_acc"] for s in steps], "s--", label="pixel acc", alpha=0.7)
        ax2.legend()
    ax2.set(xlabel="step", ylabel="%", title="validation")
    ax2.grid(alpha=0.3)
    fig.suptitle(str(Path(run_dir).name))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    from ..viz import save_figure

    save_figure(fig, out, dpi=100)
    return out
