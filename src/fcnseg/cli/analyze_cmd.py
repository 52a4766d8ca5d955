"""``fcnseg analyze``: the paper's analyses of a data set (``upper-bound`` so far)."""
from __future__ import annotations

import argparse
import sys

from .common import add_json, check_json_path, emit_json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="analyses of a data set (IU upper bound per output stride)",
                       description="The paper's analyses as tools. See `fcnseg analyze COMMAND -h`.")
    tools = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    ub = tools.add_parser(
        "upper-bound", help="mean IU of the ground truth seen through a stride-f grid",
        description="IU upper bound of an output stride (paper appendix): downsample each ground-truth "
                    "label map by f (the label at the centre of each f x f cell), upsample it back "
                    "(nearest) and score it against the original with the reference metrics. A cell "
                    "whose centre is void counts as wrong for its labelled pixels.")
    ub.add_argument("--dataset", required=True, help="data set name, e.g. camvid, voc, nyud, siftflow")
    ub.add_argument("--root", required=True, help="data set root folder")
    ub.add_argument("--split", default="val", help="split to score (default: val)")
    ub.add_argument("--factors", default="8,16,32,64",
                    help="comma-separated output strides (default: 8,16,32,64)")
    ub.add_argument("--per-class", action="store_true", help="also print the IU of each class")
    add_json(ub, "the scores")
    ub.set_defaults(_analysis=_run_upper_bound)
    return p


def format_upper_bound(results: dict[int, dict], class_names: list[str], per_class: bool) -> str:
    """The table printed by ``fcnseg analyze upper-bound`` (scores in percent)."""
    lines = [f"{'factor':>6} {'mean IU':>8} {'pixel acc':>9} {'mean acc':>8} {'fw IU':>6} {'void pred':>9}"]
    for f, r in results.items():
        lines.append(f"{f:>6} {100 * r['mean_iou']:>8.1f} {100 * r['pixel_acc']:>9.1f} "
                     f"{100 * r['mean_acc']:>8.1f} {100 * r['fw_iou']:>6.1f} {100 * r['void_predicted']:>9.2f}")
    if per_class:
        width = max(len(n) for n in class_names)
        lines += ["", f"{'IU (%)':<{width}} " + " ".join(f"{f:>6}" for f in results)]
        for c, name in enumerate(class_names):
            lines.append(f"{name:<{width}} " + " ".join(f"{100 * r['iou'][c]:>6.1f}" for r in results.values()))
    return "\n".join(lines)


def _run_upper_bound(args: argparse.Namespace) -> int:
    from ..analysis.upper_bound import parse_factors, upper_bound
    from ..data import get_dataset

    factors = parse_factors(args.factors)
    dataset = get_dataset(args.dataset, args.root, args.split)
    check_json_path(args.json)
    results = upper_bound(dataset, factors, progress=sys.stderr.isatty() and args.json != "-")
    out = {"dataset": args.dataset, "split": args.split, "num_images": len(dataset),
           "class_names": list(dataset.class_names), "factors": {str(f): r for f, r in results.items()}}
    if not emit_json(args.json, out):
        print(f"{args.dataset} {args.split}: {len(dataset)} images; ground truth downsampled by each "
              "factor (cell centre), upsampled back (nearest), scored in %")
        print(format_upper_bound(results, list(dataset.class_names), args.per_class))
    return 0


def run(args: argparse.Namespace) -> int:
    handler = getattr(args, "_analysis", None)
    if handler is None:
        from ..errors import UserError

        raise UserError("which analysis? expected one of: upper-bound (see `fcnseg analyze -h`)")
    return handler(args)
