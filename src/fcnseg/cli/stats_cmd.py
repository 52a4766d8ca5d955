"""``fcnseg stats``: class frequencies, image sizes and median-frequency class weights of a data set."""
from __future__ import annotations

import argparse
import sys

from .common import add_json, check_json_path, emit_json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stats", help="class frequencies, image sizes and class weights of a data set",
        description="Count the labelled pixels of each class over a split (untransformed labels, "
                    "ignored pixels left out of the frequencies) and list the image sizes. "
                    "--class-weights adds SegNet's median-frequency weights: median(freq) / freq(c), "
                    "freq(c) = pixels of c / all pixels of the images containing c.")
    p.add_argument("--dataset", required=True, help="data set name, e.g. camvid, voc, sbd, nyud, siftflow")
    p.add_argument("--root", required=True, help="data set root folder")
    p.add_argument("--split", default="train", help="split to count (default: train)")
    p.add_argument("--class-weights", action="store_true",
                   help="also print the median-frequency class weights (for the train option)")
    p.add_argument("--ignore-in-median", action="store_true",
                   help="take the median over the ignore label's frequency too (closer to SegNet's "
                        "published CamVid weights)")
    add_json(p, "the statistics")
    return p


def format_table(summary: dict, title: str) -> str:
    """The human-readable report of :meth:`fcnseg.analysis.stats.DatasetStats.to_dict`."""
    total = summary["total_pixels"]
    ignored = summary["ignored_pixels"]
    share = 100.0 * ignored / total if total else 0.0
    lines = [f"{title}: {summary['num_images']} images, {len(summary['classes'])} classes, "
             f"{total:,} pixels ({ignored:,} ignored, {share:.2f}%)"]
    sizes = summary["image_sizes"]
    shown = list(sizes["sizes"].items())
    more = f", ... ({len(shown) - 8} more sizes)" if len(shown) > 8 else ""
    lines.append("image sizes (H x W): " + ", ".join(f"{s} ({n})" for s, n in shown[:8]) + more)
    if sizes["height"] is not None:
        lines.append(f"height {sizes['height'][0]}..{sizes['height'][1]}, "
                     f"width {sizes['width'][0]}..{sizes['width'][1]}")
    weights = "class_weights" in summary
    head = f"{'class':<16} {'pixels':>13} {'freq':>8} {'images':>7}"
    if weights:
        head += f" {'presence freq':>13} {'weight':>8}"
    lines += ["", head]
    for row in summary["classes"]:
        line = f"{row['class']:<16} {row['pixels']:>13,} {row['frequency']:>8.4f} {row['images']:>7}"
        if weights:
            pf = row["presence_frequency"]
            line += f" {'-' if pf is None else f'{pf:.4f}':>13} {row['median_frequency_weight']:>8.4f}"
        lines.append(line)
    if weights:
        median = "over classes and ignore" if summary["ignore_in_median"] else "over classes"
        lines += ["", f"median-frequency class weights (median {median}):",
                  ", ".join(f"{w:.4f}" for w in summary["class_weights"])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..analysis.stats import compute_stats
    from ..data import get_dataset

    dataset = get_dataset(args.dataset, args.root, args.split)
    check_json_path(args.json)
    stats = compute_stats(dataset, progress=sys.stderr.isatty() and args.json != "-")
    summary = stats.to_dict(class_weights=args.class_weights, ignore_in_median=args.ignore_in_median)
    summary.update(dataset=args.dataset, split=args.split)
    if not emit_json(args.json, summary):
        print(format_table(summary, f"{args.dataset} {args.split}"))
    return 0
