"""``fcnseg convert``: Caffe weights (reference FCN or ImageNet classifier) -> fcnseg weights file."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert", help="convert a Caffe .caffemodel into an fcnseg weights file",
        description="Convert a reference FCN caffemodel (VOC, PASCAL-Context, NYUD, SIFT Flow) or an ImageNet "
                    "VGG16/CaffeNet classifier (fc6/fc7 convolutionalized, fc8 dropped) into a .safetensors "
                    "weights file for --arch. Every blob shape is checked; any layer that does not fit, is "
                    "missing or is left over is an error naming it. Caffe itself is not needed.")
    p.add_argument("caffemodel", type=Path, help="the .caffemodel file")
    p.add_argument("--model", "-m", help="fcnseg model name (see `fcnseg models`), e.g. fcn8s_vgg16")
    p.add_argument("--arch", dest="model", help=argparse.SUPPRESS)  # deprecated spelling of --model
    p.add_argument("--out", type=Path, help="output weights file (.safetensors)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes (default: the caffemodel's score_fr rows, else the model's default)")
    p.add_argument("--normalization", default=None,
                   help="input normalisation preset recorded in the file (default: the model's, 'caffe': "
                        "BGR, 0..255, minus the reference mean)")
    p.add_argument("--input-key", default="image", choices=("image", "hha"),
                   help="what the net reads: image (RGB), or hha for the reference NYUD HHA net (default: image)")
    p.add_argument("--class-names", type=Path, default=None,
                   help="text file with one class name per line, recorded in the weights file")
    p.add_argument("--verify", type=Path, default=None, metavar="PROTOTXT",
                   help="also run this reference net prototxt (e.g. voc-fcn8s/deploy.prototxt) with the caffemodel "
                        "and require the converted model to give the same scores on a random input")
    p.add_argument("--list", action="store_true",
                   help="only list the caffemodel's layers (name, type, blob shapes) and exit")
    return p


def _read_class_names(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise UserError(f"{path}: cannot read class names ({exc.strerror or exc})") from None
    if not names:
        raise UserError(f"{path}: no class names (expected one per line)")
    return names


def run(args: argparse.Namespace) -> int:
    from ..caffe.caffemodel import iter_caffemodel
    from ..caffe.convert import convert_to_file

    if args.list:
        for layer in iter_caffemodel(args.caffemodel):
            shapes = ", ".join("x".join(map(str, b.shape)) for b in layer.blobs)
            print(f"{layer.name}\t{layer.type}\t{shapes}")
        return 0
    if not args.model or not args.out:
        raise UserError("--model and --out are required (or use --list)")
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    names = _read_class_names(args.class_names) if args.class_names else None
    report = convert_to_file(args.caffemodel, args.model, args.out, args.num_classes,
                             normalization=args.normalization, class_names=names, verify=args.verify,
                             input_key=args.input_key)
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")
    return 0
