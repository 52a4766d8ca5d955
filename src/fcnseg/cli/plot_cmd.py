"""``fcnseg plot RUN_DIR``: loss and mean-IU curves of a training run, as a PNG."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("plot", help="plot training curves of a run",
                       description="Draw loss and validation mean IU of RUN_DIR/log.jsonl to a PNG.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/curves.png)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
