"""``Net``: run a Caffe net prototxt as a torch module, optionally with caffemodel weights.

Why: to prove that fcnseg's hand-written FCNs compute what the reference nets
compute, we need the reference definition itself as an executable: this interpreter
builds one module per prototxt layer and runs them in file order, blob by blob, as
Caffe's ``Net::Forward`` does (deploy mode: data layers become inputs, loss and
accuracy layers are left out).

Supported layer types: Convolution, Deconvolution (group, pad, stride, dilation,
bias_term), Pooling (MAX/AVE, Caffe rounding), ReLU, LRN, Dropout, Crop, Eltwise
(SUM/PROD/MAX, coeff), Scale, Concat, Softmax, InnerProduct, Flatten, Sigmoid, TanH,
Split; Input/Python/Data-like layers as inputs. Anything else is a :class:`UserError`
naming the layer and its type.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .caffemodel import Blob, CaffeLayer, read_caffemodel
from .ops import CaffeLRN, CaffePool2d, CaffeScale, Concat, Crop, Eltwise, Flatten, InnerProduct, Softmax, fill_
from .prototxt import net_layers, read_prototxt

INPUT_TYPES = frozenset({"Input", "Python", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData",
                         "WindowData", "AnnotatedData", "VideoData"})
IGNORED_TYPES = frozenset({"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss",
                           "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy", "Silence"})
COMPUTE_TYPES = ("Convolution", "Deconvolution", "Pooling", "ReLU", "LRN", "Dropout", "Crop", "Eltwise",
                 "Scale", "Concat", "Softmax", "InnerProduct", "Flatten", "Sigmoid", "TanH", "Split")
DEFAULT_INPUT_CHANNELS = 3


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _pair(param: Mapping[str, Any], name: str, default: int | None, layer: str) -> tuple[int, int]:
    """Caffe's 2-D spatial parameter: ``name`` (one or two values) or ``name_h``/``name_w``."""
    if f"{name}_h" in param or f"{name}_w" in param:
        if f"{name}_h" not in param or f"{name}_w" not in param:
            raise UserError(f"layer {layer!r}: give both {name}_h and {name}_w")
        return int(param[f"{name}_h"]), int(param[f"{name}_w"])
    values = _as_list(param.get(name))
    if not values:
        if default is None:
            raise UserError(f"layer {layer!r}: {name} is required")
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise UserError(f"layer {layer!r}: {len(values)} values for {name}; only 2-D layers are supported")


def _module_key(name: str, taken: set[str]) -> str:
    key = re.sub(r"[^\w/-]", "_", name) or "layer"
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


@dataclass
class _Step:
    name: str
    type: str
    key: str
    bottoms: list[str]
    tops: list[str]


@dataclass
class LoadReport:
    """What loading a caffemodel into a :class:`Net` did (Caffe ignores both lists too)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # net layers with parameters, not in the file
    unused: list[str] = field(default_factory=list)  # file layers with blobs, not in the net


def _as_tensor(array: np.ndarray) -> Tensor:
    """A tensor viewing a (read-only, memory-mapped) blob array, for copying from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: we only read it
        return torch.from_numpy(np.asarray(array, dtype=np.float32) if array.dtype != np.float32
                                else array)


def copy_blob(param: Tensor, blob: Blob) -> None:
    """Copy a blob into ``param`` (same number of values; shapes are checked by the caller)."""
    with torch.no_grad():
        param.copy_(_as_tensor(blob.data).reshape(param.shape))


class Net(nn.Module):
    """A Caffe net prototxt as a torch module.

    Args:
        prototxt: path of a net prototxt, or an already parsed one (dict), e.g. edited
            in memory.
        caffemodel: optional weights (a file, or layers as :func:`read_caffemodel` returns
            them), loaded by layer name with shape checks (:meth:`load_caffemodel`).
        phase: ``"TEST"`` or ``"TRAIN"``, for the layers' include/exclude rules.
        input_channels: channels of input blobs whose count the prototxt does not say
            (Python/Data layers). Otherwise taken from ``Input`` shapes, from the first
            convolution's blob in the caffemodel, or 3.

    ``forward(x)`` (one input) or ``forward(**{"color": x, "hha": y})`` returns the net's
    output blob (the blobs no layer consumes), or a dict if there are several;
    :meth:`forward_blobs` returns any blobs by name.
    """

    def __init__(self, prototxt: str | Path | Mapping[str, Any],
                 caffemodel: str | Path | Iterable[CaffeLayer] | None = None, *,
                 phase: str = "TEST", input_channels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        if phase not in ("TEST", "TRAIN"):
            raise UserError(f"phase must be TEST or TRAIN, got {phase!r}")
        if isinstance(prototxt, Mapping):
            net_def, self.source = dict(prototxt), "<prototxt>"
        else:
            net_def, self.source = read_prototxt(prototxt), str(prototxt)
        self.phase = phase
        self.name = str(net_def.get("name", ""))
        file_layers = (None if caffemodel is None else read_caffemodel(caffemodel)
                       if isinstance(caffemodel, (str, Path)) else list(caffemodel))
        self._hints = {layer.name: layer for layer in file_layers or [] if layer.blobs}
        self._given_channels = dict(input_channels or {})
        self.layer_modules = nn.ModuleDict()
        self._steps: list[_Step] = []
        self.channels: dict[str, int | None] = {}
        self.assumed_channels: dict[str, int] = {}
        self.layer_types: dict[str, str] = {}
        self._build(net_def)
        self._hints = {}
        if file_layers is not None:
            self.load_caffemodel(file_layers)

    # ------------------------------------------------------------------ building
    def _where(self, layer: str) -> str:
        return f"{self.source}: layer {layer!r}"

    def _included(self, layer: Mapping[str, Any], name: str) -> bool:
        include, exclude = _as_list(layer.get("include")), _as_list(layer.get("exclude"))
        if include and exclude:
            raise UserError(f"{self._where(name)} has both include and exclude rules")

        def meets(rule: Mapping[str, Any]) -> bool:
            if "phase" in rule and rule["phase"] != self.phase:
                return False
            if int(rule.get("min_level", 0)) > 0 or int(rule.get("max_level", 0)) < 0:
                return False
            return not _as_list(rule.get("stage"))  # no stages are set on this net

        if include:
            return any(meets(r) for r in include)
        return not any(meets(r) for r in exclude)

    def _build(self, net_def: Mapping[str, Any]) -> None:
        available: dict[str, bool] = {}  # blob -> is an input blob
        consumed: set[str] = set()
        input_blobs: list[str] = []
        # legacy net-level inputs: input: "data" input_dim: 1 input_dim: 3 ...
        legacy_inputs = _as_list(net_def.get("input"))
        dims = [int(d) for d in _as_list(net_def.get("input_dim"))]
        legacy_shapes = [_as_list(s.get("dim")) for s in _as_list(net_def.get("input_shape"))]
        for i, blob in enumerate(legacy_inputs):
            ch = None
            if len(legacy_shapes) > i and len(legacy_shapes[i]) > 1:
                ch = int(legacy_shapes[i][1])
            elif len(dims) >= 4 * (i + 1):
                ch = dims[4 * i + 1]
            self._add_input(blob, ch, available, input_blobs)
        taken: set[str] = set()
        seen_names: set[str] = set()
        for index, layer in enumerate(net_layers(dict(net_def), self.source)):
            name = str(layer.get("name", f"layer{index}"))
            kind = str(layer.get("type", ""))
            if not self._included(layer, name):
                continue
            if name in seen_names:
                raise UserError(f"{self._where(name)}: duplicate layer name")
            seen_names.add(name)
            bottoms = [str(b) for b in _as_list(layer.get("bottom"))]
            tops = [str(t) for t in _as_list(layer.get("top"))]
            if kind in INPUT_TYPES:
                shapes = [_as_list(s.get("dim")) for s in _as_list(layer.get("input_param", {}).get("shape"))]
                for i, top in enumerate(tops):
                    shape = shapes[i] if len(shapes) > i else (shapes[0] if shapes else [])
                    self._add_input(top, int(shape[1]) if len(shape) > 1 else None, available, input_blobs)
                continue
            if kind in IGNORED_TYPES:
                continue
            if kind not in COMPUTE_TYPES:
                raise UserError(f"{self._where(name)} has unsupported type {kind!r}; supported types: "
                                f"{', '.join(COMPUTE_TYPES)}, data layers ({', '.join(sorted(INPUT_TYPES))}) "
                                f"and loss/accuracy layers (left out)")
            for b in bottoms:
                if b not in available:
                    raise UserError(f"{self._where(name)} needs blob {b!r}, which no earlier layer produces")
            if not tops:
                raise UserError(f"{self._where(name)} has no top blob")
            module, top_channels = self._make(name, kind, layer, bottoms, tops)
            key = _module_key(name, taken)
            self.layer_modules[key] = module
            self.layer_types[name] = kind
            self._steps.append(_Step(name, kind, key, bottoms, tops))
            consumed.update(bottoms)
            for top, ch in zip(tops, top_channels):
                self.channels[top] = ch
                if top not in bottoms:
                    available[top] = False
                consumed.discard(top)  # an in-place top is a fresh blob
        self.inputs = [b for b in input_blobs if any(b in s.bottoms for s in self._steps)]
        self.outputs = [b for b, is_input in available.items() if not is_input and b not in consumed]
        if not self._steps:
            raise UserError(f"{self.source}: the net has no computing layers")

    def _add_input(self, blob: str, channels: int | None, available: dict[str, bool], inputs: list[str]) -> None:
        if blob in self._given_channels:
            channels = int(self._given_channels[blob])
        self.channels[blob] = channels
        available[blob] = True
        if blob not in inputs:
            inputs.append(blob)

    def _in_channels(self, blob: str, name: str, kind: str, group: int) -> int:
        ch = self.channels.get(blob)
        if ch is not None:
            return ch
        hint = self._hints.get(name)
        if hint is not None and hint.blobs and len(hint.blobs[0].shape) == 4:
            shape = hint.blobs[0].shape
            ch = shape[1] * group if kind == "Convolution" else shape[0]
        else:
            ch = DEFAULT_INPUT_CHANNELS
            self.assumed_channels[blob] = ch
        self.channels[blob] = ch
        return ch

    def _make(self, name: str, kind: str, layer: Mapping[str, Any], bottoms: list[str],
              tops: list[str]) -> tuple[nn.Module, list[int | None]]:
        def need(n: int) -> None:
            if len(bottoms) != n:
                raise UserError(f"{self._where(name)} ({kind}) needs {n} bottom blob(s), has {len(bottoms)}")

        def same(module: nn.Module) -> tuple[nn.Module, list[int | None]]:
            need(1)
            return module, [self.channels.get(bottoms[0])] * len(tops)

        if kind in ("Convolution", "Deconvolution"):
            need(1)
            p = layer.get("convolution_param", {})
            if "num_output" not in p:
                raise UserError(f"{self._where(name)}: convolution_param.num_output is required")
            if int(p.get("axis", 1)) != 1:
                raise UserError(f"{self._where(name)}: only axis 1 convolutions are supported")
            out = int(p["num_output"])
            group = int(p.get("group", 1))
            kernel = _pair(p, "kernel", None, name) if "kernel_h" in p else _pair(p, "kernel_size", None, name)
            stride, pad = _pair(p, "stride", 1, name), _pair(p, "pad", 0, name)
            dilation = _pair(p, "dilation", 1, name)
            bias = bool(p.get("bias_term", True))
            cin = self._in_channels(bottoms[0], name, kind, group)
            if cin % group or out % group:
                raise UserError(f"{self._where(name)}: group {group} does not divide {cin} inputs and "
                                f"{out} outputs")
            cls = nn.Conv2d if kind == "Convolution" else nn.ConvTranspose2d
            # skip PyTorch's own init: the Caffe filler below decides the values
            conv = nn.utils.skip_init(cls, cin, out, kernel, stride=stride, padding=pad, dilation=dilation,
                                      groups=group, bias=bias, device=_default_device())
            if name not in self._hints:  # else the caffemodel's values overwrite them anyway
                fill_(conv.weight, p.get("weight_filler"))
                if conv.bias is not None:
                    fill_(conv.bias, p.get("bias_filler"))
            return conv, [out]
        if kind == "Pooling":
            p = layer.get("pooling_param", {})
            method = str(p.get("pool", "MAX"))
            if method not in ("MAX", "AVE"):
                raise UserError(f"{self._where(name)}: pooling method {method!r} is not supported (MAX, AVE)")
            glob = bool(p.get("global_pooling", False))
            kernel = (1, 1) if glob else (
                _pair(p, "kernel", None, name) if "kernel_h" in p else _pair(p, "kernel_size", None, name))
            stride, pad = _pair(p, "stride", 1, name), _pair(p, "pad", 0, name)
            if not glob and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
                raise UserError(f"{self._where(name)}: pad must be smaller than the kernel")
            return same(CaffePool2d(method, kernel, stride, pad, glob))
        if kind == "ReLU":
            slope = float(layer.get("relu_param", {}).get("negative_slope", 0.0))
            return same(nn.LeakyReLU(slope) if slope else nn.ReLU())
        if kind == "Sigmoid":
            return same(nn.Sigmoid())
        if kind == "TanH":
            return same(nn.Tanh())
        if kind == "Dropout":
            return same(nn.Dropout(float(layer.get("dropout_param", {}).get("dropout_ratio", 0.5))))
        if kind == "LRN":
            p = layer.get("lrn_param", {})
            return same(CaffeLRN(int(p.get("local_size", 5)), float(p.get("alpha", 1.0)),
                                 float(p.get("beta", 0.75)), float(p.get("k", 1.0)),
                                 str(p.get("norm_region", "ACROSS_CHANNELS"))))
        if kind == "Split":
            return same(nn.Identity())
        if kind == "Softmax":
            return same(Softmax(int(layer.get("softmax_param", {}).get("axis", 1))))
        if kind == "Flatten":
            p = layer.get("flatten_param", {})
            need(1)
            return Flatten(int(p.get("axis", 1)), int(p.get("end_axis", -1))), [None]
        if kind == "Crop":
            need(2)
            p = layer.get("crop_param", {})
            axis = int(p.get("axis", 2))
            ch = self.channels.get(bottoms[1] if axis in (0, 1, -4, -3) else bottoms[0])
            return Crop(name, axis, [int(o) for o in _as_list(p.get("offset"))]), [ch]
        if kind == "Eltwise":
            p = layer.get("eltwise_param", {})
            op = str(p.get("operation", "SUM"))
            coeffs = [float(c) for c in _as_list(p.get("coeff"))]
            if op not in ("SUM", "PROD", "MAX"):
                raise UserError(f"{self._where(name)}: unknown Eltwise operation {op!r}")
            if coeffs and (op != "SUM" or len(coeffs) != len(bottoms)):
                raise UserError(f"{self._where(name)}: coeff needs operation SUM and one value per bottom")
            if len(bottoms) < 2:
                raise UserError(f"{self._where(name)}: Eltwise needs at least 2 bottoms")
            return Eltwise(name, op, coeffs), [self.channels.get(bottoms[0])]
        if kind == "Concat":
            p = layer.get("concat_param", {})
            axis = int(p["axis"]) if "axis" in p else int(p.get("concat_dim", 1))
            if axis in (1, -3):
                ch: int | None = sum(self._in_channels(b, name, kind, 1) for b in bottoms)
            else:
                ch = self.channels.get(bottoms[0])
            return Concat(axis), [ch]
        if kind == "Scale":
            p = layer.get("scale_param", {})
            axis, num_axes = int(p.get("axis", 1)), int(p.get("num_axes", 1))
            bias = bool(p.get("bias_term", False))
            if len(bottoms) == 2:
                module = CaffeScale(None, axis, bias=False)
                if bias:
                    raise UserError(f"{self._where(name)}: Scale with two bottoms and bias_term is not supported")
                return module, [self.channels.get(bottoms[0])]
            need(1)
            if (axis not in (1, -3) and num_axes != 0) or num_axes not in (0, 1):
                raise UserError(f"{self._where(name)}: only per-channel (axis 1, num_axes 1) or scalar "
                                f"(num_axes 0) learned Scale layers are supported")
            shape: tuple[int, ...] = (self._in_channels(bottoms[0], name, kind, 1),) if num_axes == 1 else ()
            module = CaffeScale(shape, 1, bias)
            assert module.weight is not None
            fill_(module.weight, p.get("filler", {"type": "constant", "value": 1.0}))
            if module.bias is not None:
                fill_(module.bias, p.get("bias_filler"))
            return module, [self.channels.get(bottoms[0])]
        if kind == "InnerProduct":
            need(1)
            p = layer.get("inner_product_param", {})
            if "num_output" not in p:
                raise UserError(f"{self._where(name)}: inner_product_param.num_output is required")
            out = int(p["num_output"])
            module = InnerProduct(name, out, bool(p.get("bias_term", True)), int(p.get("axis", 1)),
                                  bool(p.get("transpose", False)), p.get("weight_filler", {}),
                                  p.get("bias_filler", {}))
            hint = self._hints.get(name)
            if hint is not None and hint.blobs:
                w = hint.blobs[0].squeezed_shape()
                if len(w) == 2:
                    module.materialize(w[0] if module.transpose else w[1])
            return module, [out]
        raise AssertionError(kind)  # pragma: no cover - COMPUTE_TYPES and this list agree

    # ------------------------------------------------------------------ weights
    def layer(self, name: str) -> nn.Module:
        """The module that computes layer ``name``."""
        for step in self._steps:
            if step.name == name:
                return self.layer_modules[step.key]
        raise KeyError(name)

    @property
    def params(self) -> dict[str, list[nn.Parameter]]:
        """Layer name -> its parameters in Caffe blob order (weight, bias), as pycaffe's ``net.params``."""
        out: dict[str, list[nn.Parameter]] = {}
        for step in self._steps:
            module = self.layer_modules[step.key]
            params = _blob_params(module)
            if params or isinstance(module, InnerProduct):
                out[step.name] = params
        return out

    def load_caffemodel(self, source: str | Path | Iterable[CaffeLayer], strict: bool = False) -> LoadReport:
        """Copy blobs into the layers of the same name; every shape is checked.

        A shape mismatch is a :class:`UserError` naming each layer. Layers missing on
        either side are listed in the returned report (Caffe ignores them too), or are
        an error with ``strict=True``.
        """
        layers = read_caffemodel(source) if isinstance(source, (str, Path)) else list(source)
        report = LoadReport()
        errors: list[str] = []
        by_name = {}
        for layer in layers:
            if layer.blobs:
                by_name[layer.name] = layer
        net_params = self.params
        for name, layer in by_name.items():
            if name not in net_params:
                report.unused.append(name)
                continue
            module = self.layer(name)
            if isinstance(module, InnerProduct) and module.weight is None:
                w = layer.blobs[0].squeezed_shape()
                if len(w) != 2 or w[1 if module.transpose else 0] != module.num_output:
                    errors.append(f"layer {name!r}: blob 0 has shape {_fmt(layer.blobs[0].shape)}, expected "
                                  f"{module.num_output} x K")
                    continue
                module.materialize(w[0] if module.transpose else w[1])
            params = _blob_params(module)
            if len(layer.blobs) != len(params):
                errors.append(f"layer {name!r} has {len(layer.blobs)} blob(s), the net expects {len(params)}")
                continue
            bad = [f"layer {name!r}: blob {i} has shape {_fmt(b.shape)}, the net expects {_fmt(p.shape)}"
                   for i, (b, p) in enumerate(zip(layer.blobs, params)) if not b.fits(p.shape)]
            if bad:
                errors += bad
                continue
            for blob, param in zip(layer.blobs, params):
                copy_blob(param, blob)
            report.loaded.append(name)
        report.missing = [n for n in net_params if n not in by_name]
        if strict:
            errors += [f"layer {n!r} is not in the caffemodel" for n in report.missing]
            errors += [f"caffemodel layer {n!r} is not in the net" for n in report.unused]
        if errors:
            hint = ""
            if self.assumed_channels:
                hint = (f" (input channels assumed {self.assumed_channels}; pass input_channels= if they "
                        f"differ)")
            raise UserError(f"{self.source}: caffemodel does not fit the net{hint}: " + "; ".join(errors))
        return report

    # ------------------------------------------------------------------ running
    def _bind(self, args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if args:
            if len(args) != 1 or kwargs or len(self.inputs) != 1:
                raise UserError(f"{self.source}: the net has inputs {self.inputs}; pass them by name")
            return {self.inputs[0]: args[0]}
        missing = [b for b in self.inputs if b not in kwargs]
        if missing:
            raise UserError(f"{self.source}: missing input blob(s) {missing}; the net needs {self.inputs}")
        return dict(kwargs)

    def forward_blobs(self, inputs: Mapping[str, Tensor], outputs: Iterable[str] | None = None
                      ) -> dict[str, Tensor]:
        """Run the net; return the blobs named in ``outputs`` (all blobs if None)."""
        blobs: dict[str, Tensor] = dict(inputs)
        for step in self._steps:
            module = self.layer_modules[step.key]
            result = module(*[blobs[b] for b in step.bottoms])
            if len(step.tops) == 1:
                blobs[step.tops[0]] = result
            else:  # Split-like layers: the same blob under every top name
                for top in step.tops:
                    blobs[top] = result
        if outputs is None:
            return blobs
        unknown = [o for o in outputs if o not in blobs]
        if unknown:
            raise UserError(f"{self.source}: no blob(s) {unknown} in the net")
        return {o: blobs[o] for o in outputs}

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor | dict[str, Tensor]:
        blobs = self.forward_blobs(self._bind(args, kwargs), self.outputs)
        return blobs[self.outputs[0]] if len(self.outputs) == 1 else blobs

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self._steps]


def _default_device() -> torch.device:
    """The device of ``with torch.device(...)`` (torch >= 2.3), so a Net can be built on ``meta``."""
    getter = getattr(torch, "get_default_device", None)
    return getter() if getter is not None else torch.device("cpu")


def _blob_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None))
            if isinstance(p, nn.Parameter)]


def _fmt(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"
