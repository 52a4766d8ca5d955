"""A run folder is one run: a new run never silently mixes with an older one.

A folder that already holds a run (a checkpoint, its config or its log) is refused
unless the user asks to continue it (``--resume``) or to replace it (``--overwrite``);
replacing removes only the files a run writes, never anything else in the folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..outpaths import check_output_dir

RUN_FILES = ("last.pt", "best.pt", "best.safetensors", "final.safetensors", "config.yaml", "log.jsonl")
RUN_FOLDERS = ("tb",)


def existing_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse an unwritable run folder, or one holding another run (unless resuming/overwriting).
    Creates and removes nothing (see :func:`clear_run_dir`)."""
    run_dir = check_output_dir(run_dir, "--run-dir")
    if resume:
        if overwrite:
            raise UserError("--overwrite and --resume are alternatives: --resume continues the run, "
                            "--overwrite starts a new one in its place")
        return run_dir
    found = existing_run_files(run_dir)
    if found and not overwrite:
        state = "an unfinished or finished run" if "last.pt" in found else "files of an earlier run"
        raise UserError(f"--run-dir {run_dir}: already holds {state} ({', '.join(found)}); continue it with "
                        f"`fcnseg train --resume {run_dir}`, replace it with --overwrite, or choose another "
                        "--run-dir")
    return run_dir


def clear_run_dir(run_dir: Path) -> list[str]:
    """Remove the files an earlier run wrote into ``run_dir`` (for --overwrite); the names removed."""
    removed = existing_run_files(run_dir)
    for name in removed:
        (run_dir / name).unlink()
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            removed.append(name + "/")
    return removed
