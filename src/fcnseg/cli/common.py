"""The command-line vocabulary every command shares: ``--device``, ``--precision``, ``--json [PATH]``,
``--batch-size``.

One definition each, so that an option means the same in every command (and a renamed
one keeps its old spelling as a hidden, deprecated alias).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: default of every ``--device``: CUDA when this machine has it, else the CPU
DEFAULT_DEVICE = "auto"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=DEFAULT_DEVICE,
                   help="cpu, cuda, cuda:N or auto (CUDA when available, else cpu; default: auto)")


#: what ``--precision`` accepts (fcnseg.runtime.choice.PRECISIONS)
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")

PRECISION_HELP = ("auto (default, or $FCNSEG_PRECISION): the fastest precision this machine runs well whose "
                  "labels agree with fp32 on >= 99.5%% of the shipped sample pixels (measured once, printed); "
                  "fp32: exact; bf16; fp16 (CUDA); int8 (CPU, calibrated on the shipped CamVid samples)")


def add_precision(p: argparse.ArgumentParser, default: str | None = None, help: str = PRECISION_HELP,
                  old: str | None = None) -> None:
    """``--precision auto|fp32|bf16|fp16|int8`` into ``args.precision``; ``default`` None means
    ``$FCNSEG_PRECISION`` or auto (resolved by the library). ``old`` (e.g. ``--dtype``) is accepted
    as a hidden deprecated alias."""
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=default, help=help)
    if old:
        p.add_argument(old, dest="precision", choices=PRECISION_CHOICES, help=argparse.SUPPRESS)


def add_batch_size(p: argparse.ArgumentParser, default: int, help: str, old: str | None = None) -> None:
    """``--batch-size N``; ``old`` (e.g. ``--batch``) is accepted as a hidden deprecated alias."""
    p.add_argument("--batch-size", type=int, default=default, help=f"{help} (default: {default})")
    if old:
        p.add_argument(old, dest="batch_size", type=int, help=argparse.SUPPRESS)


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help=f"also write {what} as JSON to PATH; '-' (or no PATH) prints the JSON on standard "
                        "output instead of the table")


def check_json_path(value: str | None) -> Path | None:
    """The ``--json`` file to write (None for none or for standard output), checked before any work:
    a folder, a path under a file, an unwritable folder or a read-only file system is one line."""
    if value is None or value == "-":
        return None
    from ..outpaths import check_output_file

    return check_output_file(value, "--json")


def emit_json(value: str | None, data: Any) -> bool:
    """Write ``data`` as ``--json`` says; True when it went to standard output (the table is then skipped)."""
    if value is None:
        return False
    text = json.dumps(data, indent=2) + "\n"
    if value == "-":
        sys.stdout.write(text)
        return True
    path = check_json_path(value)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:  # disk full, folder removed meanwhile: one line naming --json
        from ..outpaths import os_error_line

        raise os_error_line(exc, path, "--json") from None
    return False
