"""Export a segmentation net to ONNX, TorchScript or a ``torch.export`` ExportedProgram.

Every format takes ``N x 3 x H x W`` normalised float32 input and returns ``N x K x H x W``
logits, with batch, height and width left free. The FCN heads crop with offsets that
are Python ints and with sizes read from the input, so a trace at one size could in
principle bake that size in; :func:`export_model` therefore re-runs the exported file
at sizes other than the one it was traced at (an odd one among them) and compares it
with PyTorch before reporting success.

The model's card (:class:`fcnseg.card.ModelCard`: model, classes, palette, heads, inputs
and their preprocessing) travels inside each file: ONNX ``metadata_props["fcnseg"]``, and an
``fcnseg.json`` extra file in TorchScript and ExportedProgram archives, so that
``fcnseg predict --backend onnxruntime --model model.onnx`` preprocesses correctly.

Notes on the exporters (torch 2.13): ONNX uses the TorchScript-based exporter
(``dynamo=False``), which needs no ``onnxscript`` and records the shape arithmetic of
the crops as graph ops. The ExportedProgram is exported with ``Dim.AUTO`` sizes; the
symbolic-shape engine specialises feature maps of size 1, so it only accepts inputs
at least as large as the minimum it records (about 27-33 pixels for the registered
nets; :attr:`ExportResult.notes` says which).
"""
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..card import ModelCard
from ..complexity import input_channels
from ..errors import UserError

__all__ = ["FORMATS", "ExportResult", "export_model", "export_onnx", "export_torchscript",
           "export_program", "load_exported", "compare_outputs", "META_FILE"]

FORMATS = ("onnx", "torchscript", "exported-program")
#: name of the metadata file inside TorchScript / ExportedProgram archives
META_FILE = "fcnseg.json"
#: sizes (N, H, W) the exported file is checked at by default: none equals the trace size, one is odd
DEFAULT_CHECK_SIZES: tuple[tuple[int, int, int], ...] = ((2, 77, 53), (1, 45, 97))
MIN_OPSET = 17


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well the file matched PyTorch."""

    path: Path
    format: str
    seconds: float
    size_bytes: int
    #: ``(N, H, W)`` -> max |exported - torch| / max |torch| at that size
    checks: dict[tuple[int, int, int], float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    return fmt


def _example(model: nn.Module, size: tuple[int, int], batch: int = 2) -> Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    in_ch = input_channels(model)
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch, in_ch, *size), generator=gen).to(device)


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _quiet_exporters():
    """Silence the exporters' deprecation and constant-folding chatter (not errors)."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
    warnings.filterwarnings("ignore", message=".*TracerWarning.*")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    return ctx


# --------------------------------------------------------------------------- the three formats
def export_onnx(model: nn.Module, path: str | Path, *, meta: dict[str, Any] | None = None, opset: int = MIN_OPSET,
                example_size: tuple[int, int] = (64, 64)) -> Path:
    """Write ``model`` as ONNX with dynamic ``batch``, ``height`` and ``width``.

    Input ``input`` (``N x 3 x H x W`` float32), output ``logits`` (``N x K x H x W``);
    a multi-task net (``head_classes``, e.g. SIFT Flow's ``sem`` + ``geo``) gets one
    output per head, named after the head.
    """
    import onnx

    if opset < MIN_OPSET:
        raise UserError(f"ONNX opset must be >= {MIN_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(model, example_size)
    dyn = {0: "batch", 2: "height", 3: "width"}
    heads = getattr(model, "head_classes", None)
    outputs = list(heads) if isinstance(heads, dict) and heads else ["logits"]  # forward's dict order
    buf = io.BytesIO()
    ctx = _quiet_exporters()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (x,), buf, input_names=["input"], output_names=outputs,
                              dynamic_axes={"input": dyn, **{name: dyn for name in outputs}},
                              opset_version=int(opset),
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:
        if "opset" in str(exc).lower():
            raise UserError(f"ONNX opset {opset} is not supported by this torch ({exc})") from None
        raise
    finally:
        ctx.__exit__(None, None, None)
    proto = onnx.load_from_string(buf.getvalue())
    del buf
    if meta is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "fcnseg", json.dumps(meta)
    proto.producer_name = "fcnseg"
    _atomic_write_bytes(proto.SerializeToString(), path)
    return path


def export_torchscript(model: nn.Module, path: str | Path, *, meta: dict[str, Any] | None = None,
                       example_size: tuple[int, int] = (64, 64)) -> Path:
    """Write ``model`` as a traced TorchScript archive (``torch.jit.load`` reads it back).

    Traced, not scripted: the FCN head picks its layers with Python branches. The
    tracer records the crop sizes as ``aten::size`` ops, so the archive takes any size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example(model.eval(), example_size)
    ctx = _quiet_exporters()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)
        extra = {META_FILE: json.dumps(meta or {})}
        tmp = path.with_name(path.name + ".tmp")
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    finally:
        ctx.__exit__(None, None, None)
    os.replace(tmp, path)
    return path


def export_program(model: nn.Module, path: str | Path, *, meta: dict[str, Any] | None = None,
                   example_size: tuple[int, int] = (64, 64)) -> tuple[Path, str]:
    """Write ``model`` as a ``torch.export`` ExportedProgram (``.pt2``; ``torch.export.load`` reads it).

    Returns the path and a note on the input sizes the program accepts.
    """
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example(model.eval(), example_size)
    name = next(iter(inspect.signature(model.forward).parameters))
    shapes = {name: {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
    sym_logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = sym_logger.level
    sym_logger.setLevel(logging.ERROR)  # sympy cannot simplify the ceil-mode guards; it says so loudly
    ctx = _quiet_exporters()
    try:
        with torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=shapes)
        tmp = path.with_name(path.name + ".partial.pt2")  # torch.export.save wants the .pt2 suffix
        torch.export.save(program, str(tmp), extra_files={META_FILE: json.dumps(meta or {})})
    finally:
        ctx.__exit__(None, None, None)
        sym_logger.setLevel(level)
    os.replace(tmp, path)
    return path, _range_note(program, x)


def _smallest_accepted(run: Callable[[Tensor], Tensor], example: Tensor, axis: int) -> int:
    """The smallest size along ``axis`` (2 = height, 3 = width) an ExportedProgram accepts.

    ``torch.export`` specialises feature maps of size 1 and guards against them at
    run time, so tiny inputs are refused; its ``range_constraints`` do not show those
    guards, hence this bisection on tiny inputs (the other axis at the trace size).
    """
    def ok(size: int) -> bool:
        shape = list(example.shape)
        shape[0], shape[axis] = 1, size
        try:
            run(torch.zeros(shape, dtype=example.dtype, device=example.device))
            return True
        except Exception:
            return False

    lo, hi = 1, int(example.shape[axis])  # hi (the trace size) works
    if ok(lo):
        return lo
    while hi - lo > 1:  # invariant: lo fails, hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _range_note(program: Any, x: Tensor) -> str:
    """Which input sizes an ExportedProgram accepts, found by running it."""
    module = program.module()

    def run(t: Tensor) -> Tensor:
        with torch.no_grad():
            return module(t)

    min_h = _smallest_accepted(run, x, 2)
    min_w = _smallest_accepted(run, x, 3)
    return f"batch, height and width dynamic; accepts height >= {min_h} and width >= {min_w}"


# --------------------------------------------------------------------------- reading back
def load_exported(path: str | Path, fmt: str, *, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A callable ``N x 3 x H x W`` tensor -> logits (a dict of them for a multi-task ONNX file) running the
    exported file."""
    _check_format(fmt)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such exported model file")
    if fmt == "onnx":
        from .ort import onnx_session

        session = onnx_session(path, threads)
        names = [o.name for o in session.get_outputs()]

        def run_onnx(x: Tensor) -> Tensor | dict[str, Tensor]:
            arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            outs = session.run(names, {"input": arr})
            if names == ["logits"]:
                return torch.from_numpy(outs[0])
            return {name: torch.from_numpy(o) for name, o in zip(names, outs)}  # one output per head

        return run_onnx
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()
    else:
        module = torch.export.load(str(path)).module()

    def run_torch(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)

    return run_torch


def compare_outputs(reference: nn.Module, runner: Callable[[Tensor], Tensor],
                    sizes: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], float]:
    """``max |runner(x) - reference(x)| / max |reference(x)|`` for a random ``x`` of each ``(N, H, W)``.

    A zero reference output (an untrained FCN: its score layers start at zero)
    compares absolutely instead.
    """
    def error(ref: Tensor, got: Tensor) -> float:
        ref, got = ref.float().cpu(), got.float().cpu()
        if got.shape != ref.shape:
            return float("inf")
        scale = float(ref.abs().max())
        return float((got - ref).abs().max()) / (scale if scale > 0 else 1.0)

    out: dict[tuple[int, int, int], float] = {}
    for n, h, w in sizes:
        x = _example(reference, (h, w), batch=n)
        with torch.no_grad():
            ref, got = reference(x), runner(x)
        if isinstance(ref, dict):  # a multi-task net: the worst head counts
            same = isinstance(got, dict) and set(got) == set(ref)
            out[(n, h, w)] = max(error(ref[k], got[k]) for k in ref) if same else float("inf")
        else:
            out[(n, h, w)] = error(ref, got)
    return out


# --------------------------------------------------------------------------- one entry point
def export_model(model: nn.Module, path: str | Path, fmt: str, *, card: ModelCard | None = None,
                 meta: dict[str, Any] | None = None, opset: int = MIN_OPSET, example_size: tuple[int, int] = (64, 64),
                 check_sizes: Sequence[tuple[int, int, int]] | None = DEFAULT_CHECK_SIZES,
                 tolerance: float = 1e-4) -> ExportResult:
    """Export ``model`` to ``path`` in ``fmt`` and check the file against PyTorch.

    The check runs the written file (onnxruntime for ONNX) at ``check_sizes``, none of
    which is the trace size, and raises ``RuntimeError`` if any relative error exceeds
    ``tolerance`` or a size does not run: a file that only works at one size is a bug,
    not an export. Pass ``check_sizes=None`` to skip it. ``card`` (the model's
    :class:`~fcnseg.card.ModelCard`) is written into the file as its metadata (``meta``: a
    ready metadata dict instead).
    """
    _check_format(fmt)
    if card is not None:
        meta = card.to_meta()
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserError(f"{path}: is a folder; expected an output file name")
    model = model.eval()
    start = time.perf_counter()
    notes: list[str] = []
    if fmt == "onnx":
        export_onnx(model, path, meta=meta, opset=opset, example_size=example_size)
        heads = getattr(model, "head_classes", None)
        names = ", ".join(f"'{n}'" for n in heads) if isinstance(heads, dict) and heads else "'logits'"
        notes.append(f"ONNX opset {opset}; input 'input' N x C x H x W, output(s) {names}; "
                     "batch, height, width dynamic")
    elif fmt == "torchscript":
        export_torchscript(model, path, meta=meta, example_size=example_size)
        notes.append("TorchScript (traced); batch, height, width dynamic")
    else:
        _, note = export_program(model, path, meta=meta, example_size=example_size)
        notes.append(f"ExportedProgram; {note}")
    seconds = time.perf_counter() - start
    result = ExportResult(path=path, format=fmt, seconds=seconds, size_bytes=path.stat().st_size, notes=notes)
    if check_sizes:
        runner = load_exported(path, fmt)
        try:
            result.checks = compare_outputs(model, runner, check_sizes)
        except Exception as exc:
            raise RuntimeError(f"{path}: the exported {fmt} model failed to run at another input size "
                               f"({str(exc).splitlines()[0][:300]})") from exc
        bad = {k: v for k, v in result.checks.items() if not v <= tolerance}
        if bad:
            raise RuntimeError(f"{path}: the exported {fmt} model differs from PyTorch beyond {tolerance:g} "
                               f"relative at sizes {bad}")
    return result
