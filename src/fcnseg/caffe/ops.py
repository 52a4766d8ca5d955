"""Caffe's layer semantics as torch modules, where they differ from PyTorch's defaults.

Why these exist: the point of :class:`fcnseg.caffe.Net` is to compute exactly what
Caffe computes, so the interpreter must not inherit PyTorch's own rules where they
differ: pooling output sizes (Caffe rounds up and then drops a window that would
start in the padding, only when there is padding), average pooling divisors
(padding counts, the overhang past it does not), crops by offset, Eltwise with
coefficients, Scale and InnerProduct blob layouts, and Caffe's weight fillers.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

FLT_MAX = float(torch.finfo(torch.float32).max)


# ---------------------------------------------------------------------------- pooling
def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's PoolingLayer output size: ceil rounding, then the pad clipping rule.

    ``pooled = ceil((size + 2 pad - kernel) / stride) + 1``; if there is padding and
    the last window would start at or past ``size + pad`` (entirely in the padding),
    it is dropped. PyTorch's ``ceil_mode`` applies that rule even without padding.
    """
    pooled = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


class CaffePool2d(nn.Module):
    """MAX or AVE pooling with Caffe's output size and averaging divisor."""

    def __init__(self, method: str, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int], global_pooling: bool = False) -> None:
        super().__init__()
        if method not in ("MAX", "AVE"):
            raise ValueError(method)
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad
        self.global_pooling = global_pooling

    def extra_repr(self) -> str:
        if self.global_pooling:
            return f"{self.method}, global"
        return f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}"

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if self.global_pooling:
            kernel, stride, pad = (h, w), (1, 1), (0, 0)
        else:
            kernel, stride, pad = self.kernel, self.stride, self.pad
        out = [caffe_pooled_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, pad)]
        if min(out) < 1:
            raise UserError(f"pooling: a {h}x{w} input is smaller than the {kernel[0]}x{kernel[1]} kernel "
                            f"(pad {pad[0]}x{pad[1]}); Caffe would output an empty blob")
        # pad (or crop, if negative) so that the plain windows of a valid pooling are Caffe's
        extra = [(o - 1) * st + k - p - s for o, st, k, p, s in zip(out, stride, kernel, pad, (h, w))]
        padding = (pad[1], extra[1], pad[0], extra[0])
        if self.method == "MAX":
            # Caffe clips windows to the input: padding never wins a max (-FLT_MAX is its init)
            xp = F.pad(x, padding, value=-FLT_MAX)
            return F.max_pool2d(xp, kernel, stride)
        xp = F.pad(x, padding, value=0.0)
        summed = F.avg_pool2d(xp, kernel, stride, divisor_override=1)
        # divisor: window clipped to [-pad, size + pad), i.e. padding counts, overhang not
        # (a window wholly past the padding divides 0 by 0, as Caffe does)
        div = [torch.tensor([min(o * st - p + k, s + p) - (o * st - p) for o in range(n)],
                            dtype=x.dtype, device=x.device)
               for n, st, p, k, s in zip(out, stride, pad, kernel, (h, w))]
        return summed / (div[0][:, None] * div[1][None, :])


# ---------------------------------------------------------------------------- normalisation
class CaffeLRN(nn.Module):
    """Local response normalisation, ACROSS_CHANNELS or WITHIN_CHANNEL, as Caffe's LRNLayer."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, region: str) -> None:
        super().__init__()
        if size % 2 != 1:
            raise ValueError("LRN local_size must be odd")
        if region not in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
            raise ValueError(region)
        self.size, self.alpha, self.beta, self.k, self.region = size, alpha, beta, k, region
        half = (size - 1) // 2
        self._pool = CaffePool2d("AVE", (size, size), (1, 1), (half, half))

    def forward(self, x: Tensor) -> Tensor:
        if self.region == "ACROSS_CHANNELS":
            # scale = k + alpha / n * sum over n neighbouring channels (zero padded)
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        # WITHIN_CHANNEL: (1 + alpha * mean of x^2 over the n x n window) ^ -beta
        return x * (1 + self.alpha * self._pool(x * x)).pow(-self.beta)


# ---------------------------------------------------------------------------- shape ops
class Crop(nn.Module):
    """Caffe's Crop: crop ``bottom[0]`` to ``bottom[1]``'s shape from ``axis`` on, at ``offsets``."""

    def __init__(self, name: str, axis: int, offsets: Sequence[int]) -> None:
        super().__init__()
        self.name, self.axis, self.offsets = name, axis, list(offsets)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        n = x.ndim - axis
        if len(self.offsets) not in (0, 1, n):
            raise UserError(f"Crop layer {self.name!r}: {len(self.offsets)} offsets for {n} cropped axes")
        index: list[slice] = [slice(None)] * axis
        for i in range(n):
            off = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else i]
            size, have = ref.shape[axis + i], x.shape[axis + i]
            if off + size > have:
                raise UserError(f"Crop layer {self.name!r}: offset {off} + size {size} exceeds the bottom's "
                                f"size {have} on axis {axis + i}")
            index.append(slice(off, off + size))
        return x[tuple(index)]


class Eltwise(nn.Module):
    """Element-wise SUM (with optional coefficients), PROD or MAX of equally shaped blobs."""

    def __init__(self, name: str, operation: str, coeffs: Sequence[float]) -> None:
        super().__init__()
        self.name, self.operation, self.coeffs = name, operation, list(coeffs)

    def forward(self, *xs: Tensor) -> Tensor:
        for x in xs[1:]:
            if x.shape != xs[0].shape:
                raise UserError(f"Eltwise layer {self.name!r}: bottoms have different shapes "
                                f"{tuple(xs[0].shape)} and {tuple(x.shape)}")
        if self.operation == "SUM":
            coeffs = self.coeffs or [1.0] * len(xs)
            out = xs[0] * coeffs[0] if coeffs[0] != 1 else xs[0]
            for c, x in zip(coeffs[1:], xs[1:]):
                out = out + (x * c if c != 1 else x)
            return out
        out = xs[0]
        for x in xs[1:]:
            out = out * x if self.operation == "PROD" else torch.maximum(out, x)
        return out


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.axis)


class Softmax(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(x, dim=self.axis)


class Flatten(nn.Module):
    def __init__(self, axis: int, end_axis: int) -> None:
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, self.axis, self.end_axis)


# ---------------------------------------------------------------------------- parametric
class CaffeScale(nn.Module):
    """Caffe's Scale: multiply by a learned ``(C,)`` blob (or by ``bottom[1]``), optional bias."""

    def __init__(self, shape: tuple[int, ...] | None, axis: int, bias: bool) -> None:
        super().__init__()
        self.axis = axis
        self.weight = nn.Parameter(torch.ones(shape)) if shape is not None else None
        self.bias = nn.Parameter(torch.zeros(shape if shape is not None else ())) if bias else None

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        s = scale if scale is not None else self.weight
        assert s is not None
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        tail = (1,) * (x.ndim - axis - s.ndim)
        out = x * s.reshape(s.shape + tail) if s.ndim else x * s
        if self.bias is not None:
            b = self.bias
            out = out + (b.reshape(b.shape + (1,) * (x.ndim - axis - b.ndim)) if b.ndim else b)
        return out


class InnerProduct(nn.Module):
    """Caffe's InnerProduct: flatten from ``axis`` on, then ``W x + b`` with W ``(N, K)``.

    ``K`` (inputs per output) depends on the spatial size of the bottom, which a net
    prototxt without fixed input shape does not give, so the weight is created from
    the caffemodel blob or, failing that, at the first forward with the layer's filler.
    """

    def __init__(self, name: str, num_output: int, bias: bool, axis: int, transpose: bool,
                 weight_filler: dict[str, Any], bias_filler: dict[str, Any]) -> None:
        super().__init__()
        self.name, self.num_output, self.axis, self.transpose = name, num_output, axis, transpose
        self.weight_filler, self.bias_filler = weight_filler, bias_filler
        self.register_parameter("weight", None)
        self.bias = nn.Parameter(fill_(torch.empty(num_output), bias_filler)) if bias else None

    def weight_shape(self, k: int) -> tuple[int, int]:
        return (k, self.num_output) if self.transpose else (self.num_output, k)

    def materialize(self, k: int) -> nn.Parameter:
        """Create the ``(N, K)`` weight (filled by the layer's weight filler)."""
        ref = self.bias if self.bias is not None else torch.empty(0)
        self.weight = nn.Parameter(fill_(torch.empty(self.weight_shape(k), dtype=ref.dtype,
                                                     device=ref.device), self.weight_filler))
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        flat = x.reshape(*x.shape[:axis], -1)
        k = flat.shape[-1]
        if self.weight is None:
            self.materialize(k)
        assert self.weight is not None
        if self.weight_shape(k) != tuple(self.weight.shape):
            raise UserError(f"InnerProduct layer {self.name!r}: the bottom has {k} inputs per sample, "
                            f"the weight is {'x'.join(map(str, self.weight.shape))}")
        w = self.weight.t() if self.transpose else self.weight
        return F.linear(flat, w, self.bias)

    def extra_repr(self) -> str:
        return f"num_output={self.num_output}, bias={self.bias is not None}, axis={self.axis}"


# ---------------------------------------------------------------------------- fillers
def fill_(tensor: Tensor, filler: dict[str, Any] | None, default: str = "constant") -> Tensor:
    """Initialise ``tensor`` in place like Caffe's ``FillerParameter`` (default: constant 0).

    Fan-in and fan-out follow Caffe: ``count / shape[0]`` and ``count / shape[1]``.
    """
    f = dict(filler or {})
    kind = f.get("type", default)
    with torch.no_grad():
        if tensor.numel() == 0:
            return tensor
        count = tensor.numel()
        fan_in = count / tensor.shape[0] if tensor.ndim else 1
        fan_out = count / (tensor.shape[1] if tensor.ndim > 1 else 1)
        norm = f.get("variance_norm", "FAN_IN")
        n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}.get(norm)
        if n is None:
            raise UserError(f"unknown filler variance_norm {norm!r}")
        if kind == "constant":
            tensor.fill_(float(f.get("value", 0.0)))
        elif kind == "uniform":
            tensor.uniform_(float(f.get("min", 0.0)), float(f.get("max", 1.0)))
        elif kind == "gaussian":
            tensor.normal_(float(f.get("mean", 0.0)), float(f.get("std", 1.0)))
            sparse = int(f.get("sparse", -1))
            if sparse >= 0:
                keep = min(1.0, sparse / tensor.shape[0]) if tensor.ndim else 1.0
                tensor.mul_(torch.bernoulli(torch.full_like(tensor, keep)))
        elif kind == "positive_unitball":
            tensor.uniform_(0, 1)
            rows = tensor.view(tensor.shape[0], -1) if tensor.ndim else tensor.view(1, 1)
            rows.div_(rows.sum(dim=1, keepdim=True))
        elif kind == "xavier":
            scale = math.sqrt(3.0 / n)
            tensor.uniform_(-scale, scale)
        elif kind == "msra":
            tensor.normal_(0.0, math.sqrt(2.0 / n))
        elif kind == "bilinear":
            if tensor.ndim != 4 or tensor.shape[2] != tensor.shape[3]:
                raise UserError(f"bilinear filler needs a square 4-D blob, got {tuple(tensor.shape)}")
            k = tensor.shape[3]
            factor = math.ceil(k / 2)
            center = (k - 1) / (2.0 * factor)  # BVLC master; symmetric for odd k too
            og = torch.arange(k, dtype=torch.float64)
            filt = 1 - (og / factor - center).abs()
            tensor.copy_((filt[:, None] * filt[None, :]).expand_as(tensor))
        else:
            raise UserError(f"unsupported filler type {kind!r}")
    return tensor
