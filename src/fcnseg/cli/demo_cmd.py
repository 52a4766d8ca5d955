"""``fcnseg demo``: the shipped CamVid model on the shipped CamVid samples, with pictures and scores.

Needs nothing but the installed package: the sample images and labels live in
``fcnseg/samples/camvid`` and the model in ``fcnseg/weights``. Writes, per sample,
the label map, an overlay and a side-by-side figure (image | prediction | ground
truth with a class legend), plus ``demo.png`` with all samples, and prints the
segmentation scores on the samples.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..errors import UserError
from ..shipped import DEFAULT_MODEL
from .common import add_device, add_precision

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "camvid"
VOID = 11


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="segment the shipped CamVid samples with the shipped model; pictures + scores",
        description="Run the shipped CamVid model on the sample CamVid validation images shipped with "
                    "fcnseg (no download). Writes label maps, overlays, a side-by-side figure per image "
                    "(image | prediction | ground truth, with a class legend) and demo.png with all of them, "
                    "and prints pixel accuracy, mean accuracy, mean IoU and per-class IoU on the samples.")
    p.add_argument("--out", "-o", type=Path, default=Path("fcnseg-demo"),
                   help="output folder (default: ./fcnseg-demo)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"a trained 11-class CamVid model: shipped name or weights file (default: {DEFAULT_MODEL})")
    add_device(p)
    add_precision(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print only the scores")
    return p


def sample_pairs() -> list[tuple[Path, Path]]:
    """The shipped ``(image, label)`` sample pairs."""
    images = sorted((SAMPLES / "images").glob("*.jpg"))
    pairs = [(im, SAMPLES / "labels" / f"{im.stem}.png") for im in images]
    pairs = [(im, lab) for im, lab in pairs if lab.is_file()]
    if not pairs:
        raise UserError(f"{SAMPLES}: the demo sample images are missing from this installation of fcnseg")
    return pairs


def _load(model_arg: str, device: str, precision: str | None = None):
    from ..inference import (
        UntrainedModelWarning,
        list_shipped_models,
        load_model,
        shipped_weights_path,
    )
    from ..models import list_models

    looks_like_file = Path(model_arg).suffix or "/" in model_arg
    if not looks_like_file and not shipped_weights_path(model_arg).is_file():
        if model_arg in list_models():
            raise UserError(f"demo needs trained weights: {model_arg!r} is an untrained architecture "
                            "(pass a shipped model name or a weights file)")
        shipped = list_shipped_models()
        raise UserError(f"shipped model {model_arg!r} is not installed (missing "
                        f"{shipped_weights_path(model_arg)}; installed: {', '.join(shipped) or 'none'}); "
                        "reinstall fcnseg or pass --model WEIGHTS_FILE")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        model = load_model(model_arg, device=device, precision=precision)
    if not model.trained:
        raise UserError(f"demo needs trained weights; {model_arg!r} has none")
    if model.num_classes != 11:
        raise UserError(f"{model_arg}: the demo samples are CamVid (11 classes) but the model has "
                        f"{model.num_classes}")
    return model


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..imageio import read_image, read_label_png, write_label_png, write_rgb_png
    from ..inference.files import check_out_dir as _check_out_dir
    from ..metrics import ConfusionMatrix
    from ..viz import camvid_class_names, overlay, side_by_side

    start = time.perf_counter()
    pairs = sample_pairs()
    out = _check_out_dir(args.out)
    model = _load(args.model, args.device, args.precision)
    names = model.class_names if len(model.class_names) == 11 else camvid_class_names()
    palette = model.palette
    # the pictures also name CamVid's void label (11), drawn black and not scored
    fig_names = list(names) + ["void"]
    fig_palette = np.concatenate([np.asarray(palette, np.uint8)[:11], np.zeros((1, 3), np.uint8)])
    total = ConfusionMatrix(11, ignore_index=VOID)
    rows = []
    per_image = []
    for img_path, lab_path in pairs:
        image = read_image(img_path)
        gt = read_label_png(lab_path)
        if gt.shape != image.shape[:2]:
            raise UserError(f"{lab_path}: label size {gt.shape} differs from its image {image.shape[:2]}")
        pred = model.predict(image)
        cm = ConfusionMatrix(11, ignore_index=VOID)
        cm.update(pred, gt)
        total.update(pred, gt)
        miou = cm.compute()["mean_iou"]
        per_image.append((img_path.stem, miou))
        stem = img_path.stem
        write_label_png(out / f"{stem}.png", pred, palette)
        write_rgb_png(out / f"{stem}_overlay.png", overlay(image, pred, palette, 0.5))
        fig = side_by_side(image, pred, gt, class_names=fig_names, palette=fig_palette,
                           titles=["image", f"prediction (mIoU {100 * miou:.1f}%)", "ground truth"])
        write_rgb_png(out / f"{stem}_figure.png", fig)
        rows.append((image, pred, gt))
    write_rgb_png(out / "demo.png", _combined(rows, fig_names, fig_palette, model.name, total.compute()["mean_iou"]))
    scores = total.compute()
    elapsed = time.perf_counter() - start
    print(f"fcnseg demo: model {model.name} ({model.model}), {len(pairs)} CamVid val samples "
          f"({total.total} labelled pixels)")
    print(f"  pixel accuracy {100 * scores['pixel_acc']:.1f}%   mean accuracy {100 * scores['mean_acc']:.1f}%   "
          f"mean IoU {100 * scores['mean_iou']:.1f}%   f.w. IoU {100 * scores['fw_iou']:.1f}%")
    print("  per-class IoU: " + ", ".join(
        f"{n} {'-' if np.isnan(v) else f'{100 * v:.0f}'}" for n, v in zip(names, scores["iou"])))
    trained_on = _training_split(model.card.provenance)
    if trained_on is not None and "val" in trained_on:
        print(f"  note: {model.name} was trained on CamVid {trained_on}, which holds these val frames: the "
              "scores show it runs, not how well it does on new scenes (docs/results.md)")
    if not args.quiet:
        for stem, miou in per_image:
            print(f"  {stem}: mIoU {100 * miou:.1f}%")
        print(f"  (scores on {len(pairs)} images only; `fcnseg eval` scores a whole split)")
        print(f"wrote {out / 'demo.png'} and per-image label maps, overlays and figures to {out} "
              f"in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _combined(rows, names, palette, model_name: str, miou: float):
    """All samples as rows of image | prediction | truth at 2/3 size, one legend, one title."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..viz import colorize, get_font, grid, legend

    font = get_font(18)
    tiles = []
    for image, pred, gt in rows:
        h, w = image.shape[:2]
        size = (max(1, w * 2 // 3), max(1, h * 2 // 3))
        panels = [Image.fromarray(image).resize(size, Image.BILINEAR)]
        for m in (pred, gt):
            panels.append(Image.fromarray(colorize(m, palette)).resize(size, Image.NEAREST))
        tiles += panels
    body = grid(tiles, columns=3, gap=6)
    present = sorted({int(v) for _, p, g in rows for v in np.unique(np.concatenate([p.ravel(), g.ravel()]))
                      if 0 <= v < len(names)})
    leg = legend(names, palette, present, width=body.width, font_size=16)
    head_h = 64
    col_w = tiles[0].width + 6
    fig = Image.new("RGB", (body.width, head_h + body.height + leg.height + 6), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    draw.text((body.width // 2, 16), f"fcnseg demo: {model_name} on {len(rows)} CamVid val images, "
              f"mean IoU {100 * miou:.1f}%", fill=(0, 0, 0), font=font, anchor="mm")
    for k, title in enumerate(["image", "prediction", "ground truth"]):
        draw.text((k * col_w + tiles[0].width // 2, 46), title, fill=(0, 0, 0), font=get_font(16), anchor="mm")
    fig.paste(body, (0, head_h))
    fig.paste(leg, (0, head_h + body.height + 6))
    return fig


def _training_split(provenance: dict) -> str | None:
    """The split the model's last training stage used, as its weights record it (None: unknown)."""
    recipe = provenance.get("recipe") if isinstance(provenance, dict) else None
    split = recipe.get("train_split") if isinstance(recipe, dict) else None
    return split if isinstance(split, str) else None
