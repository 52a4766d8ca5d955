"""Which device, rewrites and precision a model runs with here, and why.

Every choice is a pure function of a :class:`DeviceSpec` (what the device is and can
do), so it can be tested with made-up devices (an AVX2-only EPYC, a Zen 4, an Intel
AMX Xeon, an H200) on any machine; :meth:`DeviceSpec.detect` describes the real one.

* :func:`plan_rewrites`: which exact rewrites of :func:`fcnseg.runtime.fast.optimize_for_inference`
  pay on the device. The depthwise upsampling is a CPU win (oneDNN runs the dense
  class-diagonal transposed convolution as a full ``K x K`` one) and a CUDA loss (cuDNN
  runs a grouped transposed convolution as its slow ``dgrad2d_c1_k1_nhwc`` kernel: 56 % of
  the GPU time of fcn8s_vgg16 fp16, 3.54 vs 1.91 ms/image on an H200, issue 16).
* :func:`choose_precision`: the fastest precision this device runs well, among those
  whose accuracy was checked (docs/performance.md, "precision=auto").
* :func:`resolve_device_name`: ``auto`` -> CUDA when present, else the CPU.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

__all__ = [
    "PRECISIONS",
    "CpuFeatures",
    "DeviceSpec",
    "PrecisionChoice",
    "RewritePlan",
    "choose_precision",
    "default_precision",
    "plan_rewrites",
    "resolve_device_name",
    "say_once",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")

#: Paths ``precision="auto"`` may choose, each one checked on the shipped camvid-fcn8s-lite0 (and bf16
#: on camvid-fcn8s-lite2: val +0.1, 99.82 % sample agreement; camvid-fcn8s-lite2-up15: val +0.01,
#: 99.85 %; docs/results.md):
#: CamVid val mIoU within 0.3 of fp32 and label agreement >= 99.5 % on the shipped samples
#: (docs/performance.md, "precision=auto"; the figures are in that table). A path missing
#: here is never chosen automatically (it stays available by name).
#: int8 is not here: onnxruntime static int8 of the shipped Lite0 agreed with fp32 on 99.18 % of
#: the sample pixels (99.32 % with the upsampling and score layers kept fp32), below 99.5 %.
#: fp16 on CUDA could not be checked without a GPU; load_model's own check (label agreement
#: on the samples, every time it is chosen) guards it.
AUTO_ELIGIBLE = {"cpu": ("bf16",), "cuda": ("fp16",)}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's vector / matrix instruction sets that decide which precision is fast."""

    flags: frozenset[str] = frozenset()

    @classmethod
    def detect(cls) -> CpuFeatures:
        """This CPU's flags from ``/proc/cpuinfo``; elsewhere, what torch reports (AVX2 / AVX512, bf16)."""
        flags = set(cpu_flags())
        if not flags:
            cap = str(torch.backends.cpu.get_cpu_capability()).lower()  # "avx2", "avx512", "default", ...
            if "avx512" in cap:
                flags |= {"avx2", "avx512f"}
            elif "avx2" in cap:
                flags.add("avx2")
            try:
                if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                    flags.add("avx512_bf16")
            except (AttributeError, RuntimeError):
                pass
        return cls(frozenset(flags))

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def amx_int8(self) -> bool:
        return "amx_int8" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def vnni(self) -> str | None:
        return next((f for f in ("avx512_vnni", "avx_vnni") if f in self.flags), None)

    def describe(self) -> str:
        have = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
                if f in self.flags]
        return ", ".join(have) or "no AVX2"


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model_name() -> str:
    """The CPU model as ``lscpu`` prints it ("Model name"), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


@dataclass(frozen=True)
class DeviceSpec:
    """What a device is: ``cpu`` with its features, or ``cuda`` with its compute capability."""

    type: str = "cpu"
    cpu: CpuFeatures = field(default_factory=CpuFeatures)
    cuda_capability: tuple[int, int] | None = None
    name: str = ""

    @classmethod
    def detect(cls, device: str | torch.device = "cpu") -> DeviceSpec:
        dev = torch.device(device)
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            return cls("cuda", cuda_capability=tuple(torch.cuda.get_device_capability(index)),
                       name=torch.cuda.get_device_name(index))
        if dev.type == "cpu":
            return cls("cpu", cpu=CpuFeatures.detect(), name=cpu_model_name())
        return cls(dev.type, name=dev.type)


# --------------------------------------------------------------------------- rewrites
@dataclass(frozen=True)
class RewritePlan:
    """The rewrites of the optimised copy that pay on a device, with the reason for each."""

    depthwise: bool
    channels_last: bool
    cudnn_benchmark: bool
    why: tuple[str, ...] = ()
    #: conv + ReLU/ReLU6 as one oneDNN call in eager runs (:func:`fcnseg.runtime.fast.fuse_conv_activations`)
    fuse_activations: bool = False


def plan_rewrites(spec: DeviceSpec, *, fixed_size: bool = False) -> RewritePlan:
    """The rewrites to apply on ``spec`` (BatchNorm folding is exact and cheaper everywhere).

    ``fixed_size``: every batch has the same shape (``fcnseg bench``, a stream of equal
    frames), so cuDNN's autotuner (``cudnn.benchmark``) pays its one search per shape once.
    """
    if spec.type == "cuda":
        return RewritePlan(
            depthwise=False, channels_last=True, cudnn_benchmark=fixed_size,
            why=("depthwise upsampling off on CUDA: cuDNN's grouped transposed convolution "
                 "(dgrad2d_c1_k1_nhwc) made fcn8s_vgg16 fp16 1.85x slower on an H200",
                 "channels_last on CUDA: cuDNN's tensor-core kernels are NHWC",
                 "cudnn.benchmark " + ("on: fixed-size batches" if fixed_size else
                                       "off: input sizes vary, each new size would be autotuned")))
    if spec.type == "cpu":
        return RewritePlan(
            depthwise=True, channels_last=True, cudnn_benchmark=False, fuse_activations=True,
            why=("depthwise upsampling on the CPU: K times less arithmetic, oneDNN runs the "
                 "class-diagonal layer as a dense K x K one",
                 "channels_last on the CPU: oneDNN's blocked kernels, no reorder per layer",
                 "conv + ReLU/ReLU6 fused on the CPU (eager runs): one pass over each activation "
                 "instead of two (measured on the AMX Xeon, docs/performance.md)"))
    return RewritePlan(depthwise=False, channels_last=False, cudnn_benchmark=False,
                       why=(f"no rewrites measured on {spec.type}: the plain layout",))


# --------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16 | int8: the first candidate, or fp32
    reason: str
    requested: str = "auto"
    #: every lower precision this device may run well, best first (measured by
    #: fcnseg.inference.precision against fp32 before one is taken)
    candidates: tuple[str, ...] = ()

    def message(self) -> str:
        if self.requested != "auto":
            return f"precision {self.precision} (requested)"
        return f"precision auto -> {self.precision}: {self.reason}"


#: Measured order of the fast paths on CPUs that have both (docs/performance.md,
#: "precision=auto"): int8 (onnxruntime, VNNI/AMX-int8) was faster than bf16 end to end.
CPU_ORDER = ("int8", "bf16")


def choose_precision(spec: DeviceSpec, requested: str = "auto", *, trained: bool = True, rgb: bool = True,
                     int8_available: bool = True, eligible: dict[str, tuple[str, ...]] | None = None,
                     cpu_order: tuple[str, ...] = CPU_ORDER) -> PrecisionChoice:
    """The precision to run with on ``spec``; ``requested`` other than ``auto`` is kept (if possible).

    ``auto``: on a CPU the fastest of int8 (VNNI or AMX-int8; calibrated on the shipped
    sample images, so RGB models only; needs onnxruntime) and bf16 (AMX-bf16 or
    avx512_bf16), in the measured order ``cpu_order``; on CUDA fp16 (tensor cores, compute
    capability >= 7.0); else fp32. Only paths in ``eligible`` (default :data:`AUTO_ELIGIBLE`,
    those that passed the accuracy check) are chosen. Untrained weights stay fp32: their
    near-tied logits make any accuracy check meaningless.
    """
    from ..errors import UserError

    if requested not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}; expected one of: {', '.join(PRECISIONS)}")
    if requested != "auto":
        if requested == "int8" and spec.type != "cpu":
            raise UserError(f"precision int8 is a CPU path; on {spec.type} use fp16, bf16 or fp32")
        if requested == "fp16" and spec.type == "cpu":
            raise UserError("precision fp16 is for CUDA; on the CPU use bf16 or int8")
        return PrecisionChoice(requested, "requested", requested)
    allowed = (AUTO_ELIGIBLE if eligible is None else eligible).get(spec.type, ())
    if not trained:
        return PrecisionChoice("fp32", "untrained weights: no accuracy check possible, exact fp32")
    if spec.type == "cuda":
        cap = spec.cuda_capability or (0, 0)
        if "fp16" in allowed and cap >= (7, 0):
            return PrecisionChoice("fp16", f"{spec.name or 'CUDA'} (compute capability {cap[0]}.{cap[1]}) has "
                                   "fp16 tensor cores", candidates=("fp16",))
        return PrecisionChoice("fp32", f"{spec.name or 'CUDA'}: no fp16 tensor cores (capability < 7.0)")
    if spec.type != "cpu":
        return PrecisionChoice("fp32", f"no lower precision measured on {spec.type}")
    cpu = spec.cpu
    why_not: list[str] = []
    found: list[tuple[str, str]] = []
    for path in cpu_order:
        if path == "int8":
            hw = "amx_int8" if cpu.amx_int8 else cpu.vnni
            if not hw:
                why_not.append("int8: no VNNI / AMX-int8")
            elif "int8" not in allowed:
                why_not.append("int8: not accuracy-checked")
            elif not rgb:
                why_not.append("int8: calibration images are RGB single-input, the model is not")
            elif not int8_available:
                why_not.append("int8: onnxruntime is not installed")
            else:
                found.append(("int8", f"int8 ({hw}; onnxruntime, calibrated on the shipped samples)"))
        elif path == "bf16":
            hw = "amx_bf16" if cpu.amx_bf16 else ("avx512_bf16" if cpu.avx512_bf16 else None)
            if not hw:
                why_not.append("bf16: no AMX-bf16 / avx512_bf16")
            elif "bf16" not in allowed:
                why_not.append("bf16: not accuracy-checked")
            else:
                found.append(("bf16", f"bf16 ({hw})"))
    if not found:
        return PrecisionChoice("fp32", "fp32: " + ("; ".join(why_not) or "no faster path"))
    reason = f"CPU ({cpu.describe()}) runs " + " and ".join(r for _, r in found)
    if why_not:
        reason += f" ({'; '.join(why_not)})"
    return PrecisionChoice(found[0][0], reason, candidates=tuple(p for p, _ in found))


def default_precision(precision: str | None) -> str:
    """``precision`` itself, or when None the ``FCNSEG_PRECISION`` environment variable, or ``auto``."""
    import os

    return precision or os.environ.get("FCNSEG_PRECISION") or "auto"


# --------------------------------------------------------------------------- device
def resolve_device_name(name: str | torch.device | None) -> str | torch.device:
    """``auto`` (or None) -> ``cuda`` when a CUDA device is present, else ``cpu``; others unchanged."""
    if name is None or (isinstance(name, str) and name == "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """Print ``fcnseg: <message>`` on stderr the first time this process sees it."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"fcnseg: {message}", file=sys.stderr, flush=True)
