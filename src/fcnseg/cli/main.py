"""Entry point of the ``fcnseg`` command.

Each subcommand lives in ``fcnseg.cli.<name>`` and exposes ``add_parser(subparsers)``
and ``run(args) -> int``. Modules are imported only when present, so a subcommand
lands by adding its module and its name to :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings

from .. import __version__
from ..errors import UserError

COMMANDS = [
    "models", "demo", "predict", "eval", "train", "plot", "bench", "export",
    "convert", "stats", "analyze",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg",
        description="Fully Convolutional Networks for semantic segmentation "
        "(Long, Shelhamer, Darrell, CVPR 2015).",
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"fcnseg.cli.{name}_cmd"
        if importlib.util.find_spec(modname) is None:
            continue
        module = importlib.import_module(modname)
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _notes_in_one_line(command: str) -> None:
    """fcnseg's own notes (a large image decoded anyway) as one line, not Python's two."""
    from ..imageio import LargeImageWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, LargeImageWarning):
            print(f"fcnseg {command}: note: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ..runtime.allocator import keep_freed_memory

    keep_freed_memory()  # reuse freed memory: see fcnseg.runtime.allocator (FCNSEG_MALLOC=system opts out)
    try:
        from PIL import Image

        limit = Image.MAX_IMAGE_PIXELS  # --max-pixels holds for this command only
        try:
            with warnings.catch_warnings():
                _notes_in_one_line(args.command)
                return int(args._run(args) or 0)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    except UserError as exc:
        print(f"fcnseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fcnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout was closed early (`fcnseg models | head -1`): stop quietly, as a C tool killed by
        # SIGPIPE would; stdout goes to devnull so the interpreter's final flush does not fail again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # no real stdout (a test's captured stream)
            pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
