"""``fcnseg predict``: segment image files, folders or globs into label PNGs (+ overlays, probabilities).

Exit codes: 0 every image done; 1 some images failed (each named on stderr, the
others written); 2 a user error before anything was processed (bad model, no
images, unwritable output folder, bad option).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from ..shipped import DEFAULT_MODEL
from .common import add_batch_size, add_device, add_precision


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="segment images (files, folders, globs) into label maps",
        description="Segment images with a trained model. For each input image writes OUT/<name>.png, a "
                    "palette PNG whose pixel values are the class indices (folder inputs keep their "
                    "sub-folder structure), optionally OUT/<name>_overlay.png (colours blended on the image) "
                    "and OUT/<name>_probs.npy (C x H x W float32 class probabilities). Two-head models (SIFT Flow "
                    "sem + geo) also write OUT/<name>_<head>.png for each head besides the main one; "
                    "multi-input models (RGB-D, RGB + HHA) cannot run on image files alone and are refused. "
                    "Any image size works: "
                    "images too big for the memory available are tiled with enough overlap that the result "
                    "equals whole-image inference. Under torchrun (--nproc_per_node N) each process takes every "
                    "N-th input file, on its own GPU (cuda:LOCAL_RANK) or the CPU, into one output tree. "
                    "Exit status: 0 all done, 1 some images failed (named on stderr), "
                    "2 nothing done (user error).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) or quoted globs such as 'shots/**/*.jpg'")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"shipped model name, architecture name (untrained), or a .safetensors / .pt / .onnx "
                        f"file (default: {DEFAULT_MODEL})")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--probs", action="store_true",
                   help="also write <name>_probs.npy, class probabilities C x H x W float32 (large!)")
    add_batch_size(p, 4, "images per forward pass; only images of equal size are batched")
    add_device(p)
    add_precision(p)
    p.add_argument("--tile", default="auto",
                   help="tile core size in pixels for tiled inference, 0 = never tile, 'auto' (default) = "
                        "the whole image when its forward fits half the memory available, else the largest "
                        "tiles that fit (ONNX models: images above ~4 megapixels in 1024-pixel cores)")
    p.add_argument("--overlap", type=int, default=None,
                   help="overlap of neighbouring tile windows in pixels (default: enough for the model's "
                        "receptive field, which makes tiling exact; smaller is faster but may differ at seams)")
    p.add_argument("--tta", default=None,
                   help="test-time augmentation averaging probabilities, e.g. flip or flip,scales=0.75,1,1.25")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="execution backend (default: onnxruntime for .onnx models, else torch)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="expected class count (checked against the weights; sets it for untrained architectures)")
    p.add_argument("--eager", action="store_true",
                   help="torch backend: run the plain eager module instead of the optimised copy (BatchNorm "
                        "folded, depthwise upsampling, channels-last; same logits within float rounding)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="pixel limit for input images (default Pillow's 89478485): above it a note, above "
                        "twice it the image is refused as a possible decompression bomb")
    return p


def _parse_tile(value: str) -> int | str:
    if str(value).lower() == "auto":
        return "auto"
    try:
        t = int(value)
    except ValueError:
        raise UserError(f"--tile {value!r}: expected a size in pixels, 0 (off) or 'auto'") from None
    if t < 0:
        raise UserError(f"--tile must be >= 0, got {t}")
    return t


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..inference import load_model, parse_tta
    from ..inference.files import plan_jobs, run_jobs
    from ..inference.shard import shard_from_env

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in 0..1, got {args.alpha}")
    if args.overlap is not None and args.overlap < 0:
        raise UserError(f"--overlap must be >= 0, got {args.overlap}")
    tile = _parse_tile(args.tile)
    tta = parse_tta(args.tta)
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UserError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    existed = args.out.expanduser().exists()
    shard = shard_from_env()  # under torchrun: this rank's files, on this rank's device
    jobs, out = plan_jobs(args.inputs, args.out, shard=shard)
    device = shard.device(args.device)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = load_model(args.model, device=device, num_classes=args.num_classes,
                               backend=args.backend, tile=tile, overlap=args.overlap, tta=tta,
                               optimize=not args.eager, precision=args.precision)
            model.check_rgb_input()  # a multi-input net cannot run on image files: say so before any work
        except UserError:
            if not existed:  # leave no empty output folder behind
                try:
                    out.rmdir()
                except OSError:
                    pass
            raise
    for w in caught:
        print(f"fcnseg predict: warning: {w.message}", file=sys.stderr)

    def report(path: Path, message: str) -> None:
        tqdm.write(f"fcnseg predict: {message}", file=sys.stderr)

    result = run_jobs(model, jobs, out, overlay=args.overlay, alpha=args.alpha, probs=args.probs,
                      batch_size=args.batch_size, progress=not args.quiet, on_error=report, shard=shard,
                      max_pixels=args.max_pixels)
    if not args.quiet and shard.rank == 0:
        msg = f"fcnseg predict: wrote {result.total_written} label map(s) to {out}"
        if result.processes > 1:
            msg += f" ({result.processes} processes)"
        if result.total_written:
            msg += f" in {result.seconds:.1f} s, {result.images_per_second:.1f} images/s"
        if result.total_failed:
            msg += f"; {result.total_failed} image(s) failed"
        print(msg, file=sys.stderr)
    return 1 if result.total_failed else 0
