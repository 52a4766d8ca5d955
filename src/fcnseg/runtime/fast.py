"""A fast inference path: the same logits as eager PyTorch, computed sooner.

What :func:`optimize_for_inference` does, each step exact up to float rounding:

* **BatchNorm folding** (Lite0): an eval-mode BatchNorm after a convolution is an
  affine map per channel, so it is folded into the convolution's weights and bias
  and disappears (found with ``torch.fx``, the module tree is edited in place so
  the model keeps its class, attributes and forward code).
* **Depthwise upsampling** (CPU only by default, see :mod:`fcnseg.runtime.choice`): the FCN
  upsampling layers are transposed convolutions whose weights are zero off the class
  diagonal (class ``i`` upsamples into class ``i``); a diagonal layer is rewritten as a
  grouped (depthwise) one, which skips the ``K - 1`` zero filters per class (``K`` times less arithmetic). A learned,
  non-diagonal layer is left alone.
* **conv + activation fusion** (CPU): a ReLU / ReLU6 that only follows a convolution (after
  folding) runs inside it, one oneDNN call (:class:`ConvPointwise`), in eager runs.
* **channels_last** (CPU and CUDA): weights and activations in NHWC, the layout oneDNN's CPU
  convolutions and cuDNN's tensor-core kernels want; the eager NCHW path reorders
  every layer's input and, for transposed convolutions, falls back to a slow kernel.
* on CUDA with fixed-size batches (``fixed_size=True``), ``cudnn.benchmark`` while the net runs.
* **freezing** (``mode="jit"``, the CPU default of :class:`fcnseg.runtime.backends.TorchBackend`):
  TorchScript trace, freeze and ``optimize_for_inference``, which pre-packs oneDNN weights
  and fuses conv + ReLU, **one frozen graph per input shape** (:class:`ShapeFrozen`): a trace
  records the crop offsets and sizes of the shape it saw, so it is only exact for that shape;
  a shape is traced on its second use and checked against the eager net on that input.
  Or **torch.compile** (``mode="compile"``: Inductor with weight freezing).
* optionally a lower precision: ``bf16`` / ``fp16`` weights and activations.

:func:`quantize_int8` is the int8 CPU path: post-training static quantisation with a
calibration set, through onnxruntime's quantiser (QDQ, per-channel int8 weights,
uint8 activations) or PyTorch's FX graph mode with the x86 backend. Both use
VNNI instructions where the CPU has them (:func:`cpu_has_vnni`).
"""
from __future__ import annotations

import copy
import sys
import tempfile
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .choice import cpu_flags  # re-exported: fcnseg.runtime.fast.cpu_flags
from .ort import onnx_session  # re-exported: fcnseg.runtime.fast.onnx_session

__all__ = ["fold_batchnorm", "fuse_conv_activations", "ConvPointwise", "depthwise_upsampling",
           "optimize_for_inference", "FastModel", "ShapeFrozen", "quantize_int8", "Int8Model", "onnx_session",
           "OnnxRunner", "cpu_has_vnni", "cpu_flags", "normalize_batch", "labels_from_logits", "DTYPES"]

Mode = Literal["eager", "jit", "compile", "onnxruntime"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- BatchNorm folding
def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent), name, module)


def _fx_graphs(module: nn.Module, prefix: str = "") -> Iterator[tuple[nn.Module, str, torch.fx.Graph]]:
    """``(submodule, its path prefix, its torch.fx graph)`` covering ``module``: the module's own
    graph, or where fx cannot trace it, those of its children, recursively."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:
        for name, child in module.named_children():
            yield from _fx_graphs(child, f"{prefix}{name}.")
        return
    yield module, prefix, graph


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv path, bn path)`` for every BatchNorm fed only by one convolution, found with torch.fx."""
    pairs = []
    for module, prefix, graph in _fx_graphs(model):
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(_get(module, node.target), nn.BatchNorm2d):
                continue
            src = node.args[0] if node.args else None
            if not isinstance(src, torch.fx.Node) or src.op != "call_module":
                continue
            if not isinstance(_get(module, src.target), nn.Conv2d):
                continue
            # the conv's output must feed nothing but this BN, and neither module may be reused
            if len(src.users) == 1 and calls[node.target] == 1 and calls[src.target] == 1:
                pairs.append((prefix + src.target, prefix + node.target))
    return pairs


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` into it, in place.

    The BN becomes ``nn.Identity``; returns how many were folded. The model must be
    in eval mode (folding uses the running statistics).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it uses the running statistics)")
    pairs = _conv_bn_pairs(model)
    for conv_path, bn_path in pairs:
        conv, bn = _get(model, conv_path), _get(model, bn_path)
        _set(model, conv_path, fuse_conv_bn_eval(conv, bn))
        _set(model, bn_path, nn.Identity())
    return len(pairs)


# --------------------------------------------------------------------------- conv + activation fusion
#: activations oneDNN applies inside a convolution: module type -> (post-op name, its scalars)
_POSTOPS: dict[type, Callable[[nn.Module], tuple[str, list[float]]]] = {
    nn.ReLU: lambda m: ("relu", []),
    nn.ReLU6: lambda m: ("hardtanh", [0.0, 6.0]),
    nn.Hardtanh: lambda m: ("hardtanh", [float(m.min_val), float(m.max_val)]),
}


class ConvPointwise(nn.Module):
    """A ``Conv2d`` and the activation after it as one oneDNN call (``mkldnn._convolution_pointwise``,
    the op Inductor's CPU fusion emits): the activation is applied while the output is still in
    cache instead of as a second pass over memory. CPU fp32 / bf16; elsewhere, and while traced
    or compiled (the op's scalar list does not trace; TorchScript's freeze and Inductor fuse the
    pair themselves), the convolution then the activation.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.act = act
        self.attr, self.scalars = _POSTOPS[type(act)](act)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            return self.act(c(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x, c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups,
            self.attr, self.scalars, "")


def _fusable_conv(module: nn.Module, node: Any) -> str | None:
    """The path of the plain ``Conv2d`` whose output reaches ``node`` only through ``Identity`` modules."""
    while isinstance(node, torch.fx.Node) and node.op == "call_module" and len(node.users) == 1:
        m = _get(module, node.target)
        if isinstance(m, nn.Conv2d):
            plain = m.padding_mode == "zeros" and isinstance(m.padding, tuple) and type(m) is nn.Conv2d
            return node.target if plain else None
        if not isinstance(m, nn.Identity):
            return None
        node = node.args[0] if node.args else None
    return None


def fuse_conv_activations(model: nn.Module) -> int:
    """Fuse every ReLU / ReLU6 fed only by a convolution (through folded BatchNorms) into it, in place.

    An activation module used several times (EfficientNet's shared ``act``) is fused only when
    every use follows its own convolution; it then becomes ``nn.Identity``. Call after
    :func:`fold_batchnorm`. Returns how many convolutions now carry their activation.
    """
    count = 0
    for module, _prefix, graph in list(_fx_graphs(model)):
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        uses: dict[str, list[str | None]] = {}  # activation -> the conv before each of its uses
        for node in graph.nodes:
            if node.op == "call_module" and type(_get(module, node.target)) in _POSTOPS:
                uses.setdefault(node.target, []).append(_fusable_conv(module, node.args[0] if node.args else None))
        for act_path, conv_paths in uses.items():
            if any(c is None or calls[c] != 1 for c in conv_paths) or len(set(conv_paths)) != len(conv_paths):
                continue
            act = _get(module, act_path)
            for conv_path in conv_paths:
                _set(module, conv_path, ConvPointwise(_get(module, conv_path), act))
            _set(module, act_path, nn.Identity())
            count += len(conv_paths)
    return count


# --------------------------------------------------------------------------- depthwise upsampling
def _is_diagonal(deconv: nn.ConvTranspose2d) -> bool:
    w = deconv.weight
    if deconv.groups != 1 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
        return False
    idx = torch.arange(w.shape[0], device=w.device)
    off = w.detach().clone()
    off[idx, idx] = 0
    return bool(off.abs().max() == 0)


def depthwise_upsampling(model: nn.Module) -> int:
    """Rewrite every class-diagonal ``ConvTranspose2d`` as a depthwise (grouped) one, in place.

    Exact: only zero filters are dropped. Returns how many layers were rewritten.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d) and _is_diagonal(module):
            c = module.weight.shape[0]
            idx = torch.arange(c, device=module.weight.device)
            diag = module.weight.detach()[idx, idx].unsqueeze(1).clone()  # C x 1 x k x k
            module.weight = nn.Parameter(diag, requires_grad=False)
            module.groups = c
            count += 1
    return count


# --------------------------------------------------------------------------- the optimised model
class OnnxRunner:
    """``net`` exported to a temporary ONNX file and run by onnxruntime: tensor in, tensor out."""

    def __init__(self, net: nn.Module, threads: int | None = None) -> None:
        from .export import export_onnx

        self._tmp = tempfile.TemporaryDirectory(prefix="fcnseg-ort-")
        self.path = export_onnx(net.cpu(), Path(self._tmp.name) / "model.onnx")
        self.session = onnx_session(self.path, threads)

    def __call__(self, x: Tensor) -> Tensor:
        arr = x.detach().cpu().numpy()
        if not arr.flags.c_contiguous or arr.dtype != np.float32:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        return torch.from_numpy(self.session.run(["logits"], {"input": arr})[0])


class FastModel(nn.Module):
    """An inference-only wrapper: converts the input's layout and precision, runs the optimised net.

    ``steps`` lists what was done (printed by ``fcnseg bench``). The model's own
    attributes (``num_classes``, ``normalization``, ...) stay reachable as ``.net.<name>``
    and, for convenience, on the wrapper.
    """

    def __init__(self, net: Any, *, channels_last: bool, dtype: torch.dtype, steps: list[str],
                 source: nn.Module | None = None, eager_net: nn.Module | None = None,
                 cudnn_benchmark: bool = False) -> None:
        super().__init__()
        self.net = net
        self.cudnn_benchmark = cudnn_benchmark
        self.channels_last = channels_last
        self.dtype = dtype
        self.steps = steps
        self.__dict__["eager_net"] = eager_net  # the eager optimised module (not a registered child)
        for attr in ("num_classes", "normalization", "model_name", "output_stride", "variant", "modalities",
                     "head_classes", "main_head"):
            if source is not None and hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """Single-input nets take a tensor, multi-modal ones a dict; two-head nets return a dict."""
        x = {k: self._prepare(v) for k, v in x.items()} if isinstance(x, dict) else self._prepare(x)
        if self.cudnn_benchmark:
            prev = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True  # only while this net runs: not a global side effect
            try:
                out = self.net(x)
            finally:
                torch.backends.cudnn.benchmark = prev
        else:
            out = self.net(x)
        if isinstance(out, dict):
            return {k: v if v.dtype == torch.float32 else v.float() for k, v in out.items()}
        return out if out.dtype == torch.float32 else out.float()

    @property
    def method(self) -> str:
        return ", ".join(self.steps) if self.steps else "eager"


class ShapeFrozen(nn.Module):
    """An eager net run through TorchScript-frozen copies of itself, one per input shape.

    ``torch.jit.freeze`` + ``optimize_for_inference`` pre-packs the oneDNN weights and fuses
    convolution + activation (Lite0 360x480 end to end on an AMX Xeon: 35.7 vs 38.0 ms for the
    eager optimised module at 2 threads, 54.3 vs 64.9 ms at 1; docs/performance.md), but a
    trace bakes in the sizes of the input it saw (FCN crop offsets, upsampling output sizes),
    so a graph is only used for the shape, dtype and layout it was traced with.

    A shape is traced when it comes ``trace_after`` times (default 2: a folder of images that
    all differ in size, e.g. PASCAL VOC, never pays for tracing one-off shapes), and its output
    is checked against the eager net on that same input (max difference within ``rtol`` of the
    logits' range; default 1e-3 for fp32 inputs, 3e-2 for bf16/fp16, whose kernels round
    differently); if tracing fails or the check does not pass, that shape runs eagerly from
    then on (said once on stderr). At most ``max_graphs`` graphs are kept (least recently used
    dropped): each holds its own pre-packed copy of the weights.
    """

    def __init__(self, net: nn.Module, *, max_graphs: int | None = None, rtol: float | None = None,
                 trace_after: int = 2) -> None:
        super().__init__()
        self.net = net
        self.rtol = rtol
        self.trace_after = trace_after
        self._seen: Counter[tuple] = Counter()
        from .memory import param_bytes

        n_bytes = param_bytes(net)
        # a copy of the weights per graph: up to 8 for small nets, fewer for VGG-size ones (~1 GB in all)
        self.max_graphs = max_graphs or max(1, min(8, int(1e9 // max(n_bytes, 1))))
        self._graphs: OrderedDict[tuple, Any] = OrderedDict()
        self._eager: set[tuple] = set()
        self.traced_shapes: list[tuple] = []  # every shape traced, in order (for tests and reports)

    @staticmethod
    def _key(x: Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, x.device, x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous())

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        if not isinstance(x, Tensor):  # multi-modal inputs: eager
            return self.net(x)
        key = self._key(x)
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph(x)
        if key in self._eager:
            return self.net(x)
        self._seen[key] += 1
        if self._seen[key] < self.trace_after:
            return self.net(x)
        del self._seen[key]
        return self._trace(key, x)

    def _trace(self, key: tuple, x: Tensor) -> Tensor | dict[str, Tensor]:
        reference = self.net(x)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.inference_mode(False), torch.no_grad():
                    traced = torch.jit.trace(self.net, x.clone(), check_trace=False, strict=False)
                    graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                out = graph(x)
        except Exception as exc:  # TorchScript cannot trace every module: eager is always right
            return self._give_up(key, reference, f"tracing failed ({type(exc).__name__}: {str(exc)[:120]})")
        rtol = self.rtol if self.rtol is not None else (1e-3 if x.dtype == torch.float32 else 3e-2)
        problem = _mismatch(out, reference, rtol)
        if problem:
            return self._give_up(key, reference, problem)
        self._graphs[key] = graph
        self.traced_shapes.append(key[0])
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return reference

    def _give_up(self, key: tuple, reference: Any, why: str) -> Any:
        self._eager.add(key)
        print(f"fcnseg: frozen graph not used for input {list(key[0])}: {why}; running eagerly", file=sys.stderr)
        return reference


def _mismatch(out: Any, ref: Any, rtol: float) -> str | None:
    """Why a frozen graph's output differs from the eager one (None when it matches)."""
    outs, refs = (out, ref) if isinstance(ref, dict) else ({"logits": out}, {"logits": ref})
    if not isinstance(outs, dict) or set(outs) != set(refs):
        return "its outputs are not the eager net's"
    for name, r in refs.items():
        o = outs[name]
        if o.shape != r.shape:
            return f"output {name} has shape {list(o.shape)}, eager {list(r.shape)}"
        scale = float(r.float().abs().max()) or 1.0
        diff = float((o.float() - r.float()).abs().max())
        if not diff <= rtol * scale:
            return f"output {name} differs from eager by {diff:.3g} (allowed {rtol * scale:.3g})"
    return None


def optimize_for_inference(model: nn.Module, *, channels_last: bool | None = None, fold_bn: bool = True,
                           depthwise: bool | None = None, mode: Mode = "eager", dtype: str | torch.dtype = "fp32",
                           example_input: Tensor | None = None, inplace: bool = False,
                           threads: int | None = None, fixed_size: bool = False,
                           fuse_activations: bool | None = None) -> FastModel:
    """An optimised copy of ``model`` for inference; its outputs equal the eager model's within rounding.

    Args:
        channels_last: NHWC weights and activations (None: where it pays on the model's
            device, :func:`fcnseg.runtime.choice.plan_rewrites`).
        fold_bn: fold BatchNorm into the preceding convolutions.
        depthwise: rewrite class-diagonal upsampling layers as depthwise ones (None: on the
            CPU, not on CUDA, where cuDNN's grouped transposed convolution is slower).
        fixed_size: every call has the same input shape: on CUDA, ``cudnn.benchmark`` while
            the net runs.
        fuse_activations: run each conv + ReLU/ReLU6 as one oneDNN call in eager runs (None: on
            the CPU; :func:`fuse_conv_activations`).
        mode: ``eager`` (dynamic shapes, nothing compiled), ``jit`` (TorchScript freeze +
            ``torch.jit.optimize_for_inference``: oneDNN weight pre-packing and conv+ReLU
            fusion; one graph per input shape, each checked against eager, :class:`ShapeFrozen`) or ``compile``
            (``torch.compile`` with Inductor weight freezing; recompiles per new input size).
        dtype: ``fp32``, ``bf16`` or ``fp16`` (weights and activations; logits come back fp32).
            ``onnxruntime``: the optimised net exported to ONNX (dynamic sizes) and run by
            onnxruntime's CPU engine (its blocked-layout kernels were the fastest fp32 path
            for the VGG16 nets here; see docs/performance.md).
        example_input: ``jit``: a batch whose shape is traced now instead of on first use.
        inplace: edit ``model`` itself instead of a deep copy.
        threads: intra-op threads of the onnxruntime session (default: onnxruntime's choice).
    """
    if mode not in ("eager", "jit", "compile", "onnxruntime"):
        raise UserError(f"unknown optimisation mode {mode!r}; expected eager, jit, compile or onnxruntime")
    if mode == "onnxruntime":
        channels_last = False  # onnxruntime takes NCHW arrays and picks its own blocked layout
        if (DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype) != torch.float32:
            raise UserError("mode onnxruntime runs fp32 here; for int8 use quantize_int8")
    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if torch_dtype not in DTYPES.values():
        raise UserError(f"unsupported dtype {dtype!r}; expected one of: {', '.join(DTYPES)}")
    plan = device_plan(model, fixed_size=fixed_size)
    channels_last = plan.channels_last if channels_last is None else channels_last
    depthwise = plan.depthwise if depthwise is None else depthwise
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    steps: list[str] = []
    if fold_bn:
        n = fold_batchnorm(net)
        if n:
            steps.append(f"folded {n} BatchNorm")
    if depthwise:
        n = depthwise_upsampling(net)
        if n:
            steps.append(f"{n} upsampling layer(s) depthwise")
    fuse_activations = plan.fuse_activations if fuse_activations is None else fuse_activations
    if fuse_activations and mode != "onnxruntime":
        n = fuse_conv_activations(net)
        if n:
            steps.append(f"{n} conv+activation fused")
    if torch_dtype != torch.float32:
        net = net.to(torch_dtype)
        steps.append(f"{str(torch_dtype).replace('torch.', '')} weights+activations")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        steps.append("channels_last")
    runner: Any = net
    if mode == "jit":
        runner = ShapeFrozen(net)
        if example_input is not None:  # trace (and check) this shape now rather than on its second use
            x = example_input.to(device=next((p.device for p in net.parameters()), torch.device("cpu")),
                                 dtype=torch_dtype)
            with torch.inference_mode():
                runner._trace(runner._key(x := x.contiguous(memory_format=torch.channels_last)
                                          if channels_last else x), x)
        steps.append("TorchScript freeze + optimize_for_inference (per input shape)")
    elif mode == "compile":
        runner = torch.compile(net, options={"freezing": True}, dynamic=False)
        steps.append("torch.compile (inductor, freezing)")
    elif mode == "onnxruntime":
        runner = OnnxRunner(net, threads=threads)
        steps.append("exported to ONNX, onnxruntime CPU (graph optimisation ALL)")
    if plan.cudnn_benchmark:
        steps.append("cudnn.benchmark")
    return FastModel(runner, channels_last=channels_last, dtype=torch_dtype, steps=steps, source=model,
                     eager_net=net, cudnn_benchmark=plan.cudnn_benchmark)


def device_plan(model: nn.Module, *, fixed_size: bool = False):
    """The :class:`~fcnseg.runtime.choice.RewritePlan` for the device ``model``'s weights are on."""
    from .choice import DeviceSpec, plan_rewrites

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    spec = DeviceSpec(device.type) if device.type != "cuda" else DeviceSpec.detect(device)
    return plan_rewrites(spec, fixed_size=fixed_size)


# --------------------------------------------------------------------------- pre/post-processing
def normalize_batch(image: np.ndarray | Tensor, preset: Any, *, channels_last: bool = True) -> Tensor:
    """Decoded RGB uint8 ``H x W x 3`` -> normalised float ``1 x 3 x H x W``, in one pass:
    :func:`fcnseg.preprocess.normalize` as a batch of one (channels-last: the image's own memory
    order, no layout copy)."""
    from ..preprocess import normalize

    return normalize(image, preset, channels_last=channels_last).unsqueeze(0)


def labels_from_logits(logits: Tensor) -> Tensor:
    """``N x K x H x W`` logits -> ``N x H x W`` uint8 (or int32 above 256 classes) label maps.

    ``max(dim=1).indices`` rather than ``argmax(dim=1)``: the same result (first maximum
    on ties) but measured 4.7x faster on NCHW logits here (4.9 vs 22 ms for 11 x 360 x 480
    on one core), and 1.4x on channels-last ones.
    """
    labels = logits.max(dim=1).indices
    return labels.to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)


# --------------------------------------------------------------------------- int8
def cpu_has_vnni() -> str | None:
    """``avx512_vnni`` / ``avx_vnni`` if this CPU has int8 dot-product instructions, else None."""
    flags = cpu_flags()
    for name in ("avx512_vnni", "avx_vnni"):
        if name in flags:
            return name
    return None


class Int8Model:
    """A statically quantised net: ``__call__(x)`` takes fp32 ``N x 3 x H x W`` and returns fp32 logits."""

    def __init__(self, runner: Callable[[Tensor], Tensor], backend: str, method: str,
                 path: Path | None = None, keep: Any = None, eager_net: nn.Module | None = None) -> None:
        self._runner = runner
        self.eager_net = eager_net  # the fp32 net that was quantised (for FLOP counts)
        self.backend = backend
        self.method = method
        self.path = path
        self._keep = keep  # e.g. the temporary folder holding the ONNX files

    def __call__(self, x: Tensor) -> Tensor:
        return self._runner(x)


def _calibration_batches(calibration: Iterable[Tensor]) -> list[Tensor]:
    batches = [c if c.dim() == 4 else c.unsqueeze(0) for c in calibration]
    if not batches:
        raise UserError("int8 quantisation needs at least one calibration batch")
    return [b.detach().float().cpu() for b in batches]


def _quantize_onnxruntime(model: nn.Module, batches: list[Tensor], threads: int | None,
                          out_path: Path | None, calibrate: str = "minmax",
                          keep_fp32_ops: tuple[str, ...] = ()) -> Int8Model:
    import logging

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import export_onnx

    tmp = tempfile.TemporaryDirectory(prefix="fcnseg-int8-")
    fp32_path = Path(tmp.name) / "model_fp32.onnx"
    pre_path = Path(tmp.name) / "model_fp32_pre.onnx"
    h, w = batches[0].shape[2:]
    # BN folded and upsampling depthwise before export: fewer, cheaper ops to quantise
    net = optimize_for_inference(model.cpu(), channels_last=False).eager_net
    export_onnx(net, fp32_path, example_size=(int(h), int(w)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {"input": b.numpy()}

    int8_path = Path(out_path) if out_path is not None else Path(tmp.name) / "model_int8.onnx"
    ort.set_default_logger_severity(3)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
    try:
        # constant folding + shape inference first, so every bias is an initializer it can quantise
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
        # u8 activations x s8 weights: the VNNI (vpdpbusd) fast path; per-channel weight scales
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy}
        # nodes kept in fp32: by op type (e.g. ConvTranspose) or by a piece of their name (e.g. score)
        exclude = [n.name for n in onnx.load(str(pre_path)).graph.node
                   if n.op_type in keep_fp32_ops or any(k in n.name for k in keep_fp32_ops)]
        quantize_static(str(pre_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[calibrate], nodes_to_exclude=exclude)
    finally:
        root.setLevel(level)
    session = onnx_session(int8_path, threads)

    def run(x: Tensor) -> Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(["logits"], {"input": arr})[0])

    return Int8Model(run, "onnxruntime", "onnxruntime quantize_static (QDQ, per-channel s8 weights, "
                     f"u8 activations, {len(batches)} calibration batch(es))", int8_path, keep=tmp,
                     eager_net=net)


def _quantize_fx(model: nn.Module, batches: list[Tensor]) -> Int8Model:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "x86" not in torch.backends.quantized.supported_engines:
        raise UserError("this torch build has no x86 quantized engine; use backend onnxruntime")
    torch.backends.quantized.engine = "x86"
    net = copy.deepcopy(model).eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (batches[0],))
        with torch.no_grad():
            for b in batches:
                prepared(b)
        quantized = convert_fx(prepared)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return quantized(x.cpu().float())

    return Int8Model(run, "torch", "torch.ao FX graph mode, x86 backend (per-channel s8 weights, u8 "
                     f"activations, {len(batches)} calibration batches)", keep=quantized)


def quantize_int8(model: nn.Module, calibration: Iterable[Tensor], *, backend: str = "onnxruntime",
                  threads: int | None = None, out_path: str | Path | None = None) -> Int8Model:
    """Post-training static int8 quantisation of ``model`` for the CPU.

    ``calibration`` yields normalised ``N x 3 x H x W`` (or ``3 x H x W``) batches that
    set the activation ranges; real images of the target data give the best ranges
    (see ``scripts/int8_accuracy.py``). ``backend``: ``onnxruntime`` (export + its
    static quantiser; ``out_path`` keeps the int8 ``.onnx``) or ``torch`` (FX graph mode).
    """
    batches = _calibration_batches(calibration)
    if backend == "onnxruntime":
        return _quantize_onnxruntime(model, batches, threads, Path(out_path) if out_path else None)
    if backend == "torch":
        return _quantize_fx(model, batches)
    raise UserError(f"unknown int8 backend {backend!r}; expected onnxruntime or torch")


def default_threads() -> int:
    """Threads to use by default: torch's own setting (``OMP_NUM_THREADS`` if set, else the cores).

    On a machine where another process keeps a core busy, fewer threads than cores is
    faster: every parallel op waits for its slowest thread (see docs/performance.md).
    """
    return max(1, torch.get_num_threads())
