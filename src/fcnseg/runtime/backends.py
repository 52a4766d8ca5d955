"""Execution backends: a callable from a normalised ``N x 3 x H x W`` batch to logits.

``TorchBackend`` runs an ``nn.Module`` in eval mode under ``torch.inference_mode``,
by default through :func:`fcnseg.runtime.fast.optimize_for_inference` (BatchNorm folded,
depthwise bilinear upsampling, channels-last and, on the CPU, frozen TorchScript graphs per
repeated input shape: the same logits within float rounding, measured about 1.9x faster than
the plain module for the shipped Lite0 model on CPU, see docs/performance.md); the optimised
copy is made on the first call (it holds its own weights: twice the parameter memory), and
``.net`` stays the plain module (its state dict and class are what users save, export or
inspect). ``OnnxBackend`` runs an exported ``.onnx`` file with onnxruntime (input ``input``,
output ``logits`` or one output per head, dynamic ``N, H, W``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["TorchBackend", "OnnxBackend", "resolve_device"]

#: Largest net (bytes of parameters) the CPU default path runs through frozen per-shape graphs.
FREEZE_MAX_WEIGHT_BYTES = 256 * 2 ** 20


def freeze_by_default(net: nn.Module, device: torch.device, precision: str = "fp32") -> bool:
    """Whether the default path runs ``net`` through frozen per-shape graphs on ``device``: on the
    CPU in fp32, for nets up to :data:`FREEZE_MAX_WEIGHT_BYTES`, unless ``FCNSEG_FREEZE=0`` is set.

    Not in bf16: the frozen graph runs each ReLU6 as a separate clamp (TorchScript does not
    trace the fused conv + activation op), and the eager path with fused activations was
    3-4 % faster end to end (Zen 4, Lite0 12.8 vs 13.2 ms, Lite2 14.2 vs 14.8 ms,
    ``scripts/bench_compare.py --configs bf16,jit_bf16``, docs/performance.md).
    """
    if os.environ.get("FCNSEG_FREEZE", "1").strip() == "0" or device.type != "cpu" or precision != "fp32":
        return False
    from .memory import param_bytes

    return param_bytes(net) <= FREEZE_MAX_WEIGHT_BYTES


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (CUDA when available, else the CPU), ...
    checked against what this machine has."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available on this machine "
                            "(use device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {device!r} requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}; expected cpu, cuda or cuda:N")
    return dev


class TorchBackend:
    """A PyTorch net in eval mode on ``device``."""

    name = "torch"

    def __init__(self, net: nn.Module, device: torch.device, optimize: bool = True, precision: str = "fp32",
                 calibration: list[Tensor] | None = None, fixed_size: bool = False) -> None:
        self.device = device
        self.optimize = optimize
        self.precision = precision  # fp32 | bf16 | fp16 | int8 (resolved; see fcnseg.runtime.choice)
        self.calibration = calibration  # normalised batches for int8
        self.fixed_size = fixed_size
        net = net.eval().to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self._fast: nn.Module | None = None

    @property
    def runner(self) -> nn.Module:
        """The module that runs: the optimised copy (built once, on first use) or ``net``."""
        if not self.optimize and self.precision == "fp32":
            return self.net
        if self._fast is None:
            from .fast import optimize_for_inference

            if self.precision == "int8":
                self._fast = Int8Module(self.net, self.calibration or [])
            elif self.optimize:  # the rewrites that pay on this device (fcnseg.runtime.choice.plan_rewrites)
                # On the CPU also frozen TorchScript graphs, one per repeated input shape (oneDNN
                # weight pre-packing and fusion; each checked against eager, fcnseg.runtime.fast.ShapeFrozen)
                # for nets whose per-layer overheads matter (Lite0: 6-16 % faster end to end); not for
                # VGG-size nets, which are GEMM-bound (no gain measured) and whose weight copy per graph
                # would cost ~0.5 GB each.
                mode = "jit" if freeze_by_default(self.net, self.device, self.precision) else "eager"
                self._fast = optimize_for_inference(self.net, mode=mode, dtype=self.precision,
                                                    fixed_size=self.fixed_size)
            else:  # the plain module, in another precision
                self._fast = optimize_for_inference(self.net, mode="eager", dtype=self.precision, fold_bn=False,
                                                    depthwise=False, channels_last=False)
        return self._fast

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = self._to_device(x) if isinstance(x, Tensor) else {k: self._to_device(v) for k, v in x.items()}
            return self.runner(x)

    def _to_device(self, t: Tensor) -> Tensor:
        """Host batches go to a GPU from pinned (page-locked) memory, asynchronously: the copy
        overlaps the work already queued on the device."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)


class Int8Module(nn.Module):
    """A net quantised to int8 (onnxruntime, CPU) behind an ``nn.Module`` face (for ``evaluate``)."""

    def __init__(self, net: nn.Module, calibration: list[Tensor]) -> None:
        from .fast import quantize_int8

        super().__init__()
        if getattr(net, "modalities", None) or getattr(net, "head_classes", None):
            raise UserError("precision int8 runs single-input, single-head RGB models; use fp32 or bf16")
        if not calibration:
            raise UserError("precision int8 needs calibration images")
        self.quantized = quantize_int8(net.cpu(), calibration, backend="onnxruntime")
        for attr in ("num_classes", "normalization", "model_name", "output_stride", "variant"):
            if hasattr(net, attr):
                setattr(self, attr, getattr(net, attr))
        self.steps = [f"int8: {self.quantized.method}"]

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise UserError("precision int8 runs single-input RGB models")
        return self.quantized(x).to(x.device)


class OnnxBackend:
    """An ONNX model run by onnxruntime on CPU (or CUDA when its provider is installed)."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the onnxruntime backend needs onnxruntime: pip install 'fcnseg[onnx]'") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("device cuda with the onnxruntime backend needs onnxruntime-gpu "
                                "(CUDAExecutionProvider is not available)")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        names = [i.name for i in inputs]
        self.input_name = "input" if "input" in names else names[0]
        onames = [o.name for o in outputs]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map or {})
        self.meta = _fcnseg_meta(self.metadata, path)  # what `fcnseg export` wrote (may be empty)
        self.device = torch.device("cpu")  # results come back as numpy on the host
        # A multi-task export has one output per head (named after it) and says so in its metadata.
        self.head_classes: dict[str, int] | None = None
        self.main_head: str | None = None
        heads = self.meta.get("head_classes")
        if isinstance(heads, dict) and len(onames) > 1 and set(heads) == set(onames):
            self.head_classes = {name: int(heads[name]) for name in onames}
            self.main_head = self.meta.get("main_head") or onames[0]
            self.output_names = onames
            self.output_name = self.main_head
        else:
            self.output_name = "logits" if "logits" in onames else onames[0]
            self.output_names = [self.output_name]
        out = outputs[onames.index(self.output_name)]
        c = out.shape[1] if len(out.shape) == 4 else None
        self.num_classes = c if isinstance(c, int) else None

    def __call__(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        outs = self.session.run(self.output_names, {self.input_name: arr})
        if self.head_classes is None:
            return torch.from_numpy(outs[0])
        return {name: torch.from_numpy(o) for name, o in zip(self.output_names, outs)}


def _fcnseg_meta(metadata: dict[str, str], path: Path) -> dict:
    """The JSON object under the file's ``fcnseg`` metadata key (``{}`` when there is none)."""
    import json

    raw = metadata.get("fcnseg")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its 'fcnseg' metadata is not valid JSON")
    return meta
