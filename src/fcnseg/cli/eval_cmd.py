"""``fcnseg eval``: score a model over a whole data-set split with the reference metrics."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..shipped import DEFAULT_MODEL
from .common import add_batch_size, add_device, add_json, add_precision, check_json_path, emit_json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="evaluate a model on a data set split (pixel acc, mean acc, mean IoU, fw IoU)",
        description="Evaluate a model over a whole split and print the four FCN metrics and per-class "
                    "IoU / accuracy (reference score.py semantics: one confusion matrix over the split, "
                    "ignore label 255 excluded, classes absent from ground truth and prediction left out).")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME_OR_FILE",
                   help="a shipped model name, a registered architecture (untrained!), a weights file "
                        "(.safetensors) or a training checkpoint (.pt), resolved as by fcnseg.load_model "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--dataset", default=None,
                   help="camvid, voc, sbd, pascal-context, nyud, siftflow or folder "
                        "(default: the data set recorded in the weights)")
    p.add_argument("--root", required=True, help="the data set's root folder")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    add_json(p, "the results")
    p.add_argument("--confusion", metavar="PATH",
                   help="save a row-normalised confusion-matrix heatmap (.png/.pdf/.svg; needs matplotlib)")
    p.add_argument("--skip-bad", action="store_true",
                   help="log unreadable or inconsistent samples and go on (default: stop at the first)")
    add_device(p)
    add_batch_size(p, 1, "images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image's prediction "
                   "(same as --tta flip)")
    p.add_argument("--tta", default=None, metavar="SPEC",
                   help="test-time augmentation as in `fcnseg predict --tta`, e.g. flip,scales=0.75,1,1.25 "
                        "(probabilities of all views averaged)")
    add_precision(p, default="fp32",
                  help="inference precision (default fp32: exact scores; auto: the fastest accurate path of "
                       "this machine, as predict uses; int8: CPU, calibrated on the shipped CamVid samples)")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    p.add_argument("--normalization", choices=["caffe", "imagenet"], default=None,
                   help="override the model's input normalisation (rarely needed)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra data-set option (YAML value), e.g. year=2011, classes=my.yaml, "
                        "modalities=[image,hha] (a multi-input model sets modalities itself); repeatable")
    p.add_argument("--per-sequence", action="store_true",
                   help="also score each sequence (CamVid drive: the file-name prefix) on its own, in the "
                        "table and in --json (per_sequence)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="pixel limit for images (default Pillow's 89478485): above it a note, above twice it "
                        "the image is refused as a possible decompression bomb")
    return p


def _parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--dataset-option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise UserError(f"--dataset-option {item!r}: the value is not valid YAML") from None
    return out


def _check_output(path: str | None, what: str, suffixes: tuple[str, ...] | None = None) -> Path | None:
    """Fail before a long evaluation, not after it, if an output cannot be written."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(f"{p}: {what} must end in {', '.join(suffixes)}")
    from ..outpaths import check_output_file

    return check_output_file(p, what)  # a folder, under a file, not writable, read-only file system


def run(args: argparse.Namespace) -> int:

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.max_pixels is not None:
        from ..imageio import set_max_pixels

        set_max_pixels(args.max_pixels)
    json_path = check_json_path(args.json)
    from ..inference.tta import parse_tta

    tta = parse_tta(args.tta, flip=args.flip)  # a bad spec fails here, before any data is read
    fig_path = _check_output(args.confusion, "--confusion", (".png", ".pdf", ".svg", ".jpg"))
    if fig_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--confusion needs matplotlib: pip install 'fcnseg[viz]'") from None
    from ..inference.shard import shard_from_env

    # Under torchrun each process scores every WORLD_SIZE-th image on its own device (cuda:LOCAL_RANK
    # with GPUs) and the confusion matrices are summed (gloo, host tensors); rank 0 reports.
    shard = shard_from_env()
    device = _resolve_device(shard.device(args.device) if shard.active else args.device)
    if shard.active:
        shard.init()
    try:
        return _run(args, device, json_path, tta, fig_path, shard)
    finally:
        shard.close()


def _run(args: argparse.Namespace, device: Any, json_path: Path | None, tta: Any, fig_path: Path | None,
         shard: Any) -> int:
    from ..data import get_dataset
    from ..evaluate import evaluate, nan_to_none

    options = _parse_options(args.dataset_option)

    model, card = _load(args.model, device, precision=args.precision)
    dataset_name = args.dataset or card.dataset
    if not dataset_name:
        raise UserError(f"{args.model}: no data set recorded with this model; pass --dataset")
    options = {**card.dataset_options(dataset_name), **options}
    dataset = get_dataset(dataset_name, args.root, args.split, **options)
    if not card.trained and card.num_classes != dataset.num_classes:
        model, card = _load(args.model, device, num_classes=dataset.num_classes,  # size the untrained output
                            precision=args.precision)
    if not card.trained:
        print(f"fcnseg eval: warning: {args.model!r} is an untrained architecture; expect near-chance scores",
              file=sys.stderr)
    elif card.num_classes != dataset.num_classes:
        raise UserError(f"{args.model}: the model predicts {card.num_classes} classes but the data set has "
                        f"{dataset.num_classes}; evaluate it on the data set it was trained for")
    norm = args.normalization or card.normalization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DataLoader chatter; real problems are UserErrors
        result = evaluate(model, dataset, device=device, normalization=norm,
                          progress=not args.quiet and sys.stderr.isatty(),
                          batch_size=args.batch_size, num_workers=args.workers, skip_bad=args.skip_bad,
                          amp=args.amp, limit=args.limit, tta=tta, per_sequence=args.per_sequence, card=card)
    if shard.active:  # every rank's image counts added up; the matrices already are
        (result.num_images,) = shard.sum(result.num_images)
        result.skipped = shard.gather(result.skipped)  # the files each rank skipped, by name
        if shard.rank != 0:
            return 0
    total = result.num_images + len(result.skipped)
    if result.num_images == 0:
        raise UserError(f"all {total} images of {dataset_name} {args.split} were bad; nothing to score")

    title = (f"{args.model} on {dataset_name} {args.split}: {result.num_images} images, "
             f"{result.seconds:.1f} s ({device}, {norm} normalisation)")
    # files first: a closed stdout (`fcnseg eval ... | head`) must not lose the results; and a file
    # that fails to write (disk full, folder gone) is reported after the scores are printed
    data = result.to_dict()
    data.update({"model": args.model, "architecture": card.model, "dataset": dataset_name,
                 "root": str(args.root), "split": args.split, "normalization": norm, "flip": tta.flip,
                 "tta": str(tta)})
    failed: list[UserError] = []
    try:
        to_stdout = emit_json(args.json, nan_to_none(data))
    except UserError as exc:
        to_stdout, json_path = False, None
        failed.append(exc)
    if fig_path is not None:
        try:
            result.save_confusion_figure(fig_path, title=title)
        except (UserError, OSError) as exc:
            from ..outpaths import os_error_line

            failed.append(exc if isinstance(exc, UserError) else os_error_line(exc, fig_path, "--confusion"))
            fig_path = None
    if not to_stdout:
        print(result.format(title))
    if result.skipped:
        print(f"fcnseg eval: skipped {len(result.skipped)} of {total} images (bad input)", file=sys.stderr)

    for written in (json_path, fig_path):
        if written is not None:  # with --json - stdout is the JSON document alone
            print(f"wrote {written}", file=sys.stderr if to_stdout else sys.stdout)
    if failed:
        sys.stdout.flush()
        raise UserError(f"{failed[0]} (the scores are printed above)")
    return 0


# --------------------------------------------------------------------------- model resolution
def _load(spec: str, device, num_classes: int | None = None, precision: str = "fp32"):
    """The PyTorch net and its model card (:func:`fcnseg.inference.load_net`, one resolution rule for
    every command); eval scores the PyTorch net itself, so an ONNX file is refused there. ``fp32``:
    the plain module (exact scores); another precision: the module that runs the net in it."""
    from ..inference import UntrainedModelWarning, load_net

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)  # eval prints its own one-line warning
        return load_net(spec, device=device, num_classes=num_classes, purpose="evaluation (fcnseg predict runs it)",
                        precision=precision)


def _resolve_device(name: str):
    """``auto`` (CUDA when there is one) or a device checked by the inference backend's rule."""
    import torch

    from ..runtime.backends import resolve_device

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_device(name)
