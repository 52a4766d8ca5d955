"""``fcnseg export``: write a model as ONNX, TorchScript or a torch.export ExportedProgram."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX, TorchScript or an ExportedProgram (dynamic batch and size)",
        description="Export a model for deployment. Input: N x 3 x H x W float32, normalised as the model "
                    "expects (its normalisation, classes and palette are stored in the file); output: N x K x "
                    "H x W logits. Batch, height and width are dynamic. The written file is run at two sizes "
                    "other than the traced one (one odd) and compared with PyTorch before success is reported.")
    p.add_argument("--model", "-m", required=True,
                   help="architecture name (untrained), shipped model name, or a .safetensors / .pt weights file")
    p.add_argument("--format", "-f", choices=("onnx", "torchscript", "exported-program"), default="onnx",
                   help="output format (default onnx)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output file (.onnx, .pt, .pt2)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count (sets it for an architecture name; checked against weights files)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version, >= 17 (default 17)")
    p.add_argument("--trace-size", default="64x64",
                   help="input height x width used for tracing (default 64x64; the result is size-generic)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported file against PyTorch at other sizes")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted relative difference from PyTorch in the check (default 1e-4)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..inference.loader import load_net
    from ..runtime.bench import parse_size
    from ..runtime.export import DEFAULT_CHECK_SIZES, export_model

    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    from ..outpaths import check_output_file, os_error_line

    out: Path = check_output_file(args.out, "--out")  # a folder, under a file, read-only: before the work
    size = parse_size(args.trace_size, "--trace-size")
    from ..inference import UntrainedModelWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)  # said below, in one line
        model, card = load_net(args.model, num_classes=args.num_classes, purpose="export")
    from ..runtime.memory import check_fits, is_out_of_memory

    check_fits(model, (1, 3, *size), "cpu", "--trace-size")  # one line instead of an allocation traceback
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = export_model(model, out, args.format, card=card, opset=args.opset, example_size=size,
                              check_sizes=None if args.no_check else DEFAULT_CHECK_SIZES,
                              tolerance=args.tolerance)
    except OSError as exc:
        raise os_error_line(exc, out, "--out") from None
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(f"--trace-size {args.trace_size}: out of memory while exporting; use a smaller "
                        "size (the result takes any size)") from None
    print(f"wrote {result.path} ({result.size_bytes / 2 ** 20:.1f} MB, {result.format}) in {result.seconds:.1f} s")
    for note in result.notes:
        print(f"  {note}")
    trained = card.trained
    print(f"  model {card.model}, {card.num_classes} classes, normalisation {card.normalization}"
          f"{'' if trained else ' (UNTRAINED: no weights loaded, its predictions mean nothing)'}")
    if result.checks:
        checks = ", ".join(f"{n}x{h}x{w}: {err:.1e}" for (n, h, w), err in result.checks.items())
        print(f"  checked against PyTorch (max relative difference, N x H x W): {checks}"
              + ("" if trained else "; untrained score layers output zeros, so this checks shapes only"))
    return 0
