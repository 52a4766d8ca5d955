"""Filter rarefaction (paper section 3.2): trade a layer's stride for dilation downstream.

Setting the stride of one pooling or convolution layer from ``s`` to ``s / f`` makes
its output, and every map after it, ``f`` times denser. The layers after it keep
computing the same function if their filters are *rarefied*: each tap spread ``f``
samples apart (dilation x ``f``, padding x ``f``), so that they read the samples the
original filter read and skip the new in-between ones. The paper shows this is the
shift-and-stitch trick computed in one pass (:func:`fcnseg.analysis.dense.shift_and_stitch`);
the tests prove both that and that the rarefied net equals the original at the
original sampling positions (``dense[..., ::f, ::f] == original``).

This module is re-exported as :func:`fcnseg.surgery.rarefy`.
"""
from __future__ import annotations

import copy
import math

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..errors import UserError

__all__ = ["rarefy", "RarefiedMaxPool2d"]

# Spatial layers whose rarefied form is not a dilation of the same layer: a model in
# which one of these follows the rarefied layer is refused rather than silently changed.
_UNSUPPORTED = (
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Upsample,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
    nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d, nn.Conv1d, nn.Conv3d,
    nn.MaxPool1d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.Fold, nn.Unfold,
)


def _pool_out(length: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """PyTorch's pooling output length (``pooling_output_shape``), ceil rule included."""
    num = length + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-num // stride) if ceil else num // stride) + 1
    if ceil and (out - 1) * stride >= length + pad:
        out -= 1
    return out


class RarefiedMaxPool2d(nn.Module):
    """A max pooling layer evaluated on a map ``in_factor`` times denser than the original's
    input, producing an output ``out_factor`` times denser than the original's output.

    Its stride is ``s * in_factor / out_factor`` and its taps, padding included, are
    spread by ``in_factor``. Unlike a plain ``MaxPool2d`` with those numbers it also
    reproduces ceil mode: the original's partial last window (which reaches past the
    padding) is kept by padding the far side with ``-inf`` and cropping to the dense
    length, so every original sample has its dense counterpart at index ``out_factor * i``.
    """

    def __init__(self, pool: nn.MaxPool2d, in_factor: int = 1, out_factor: int = 1) -> None:
        super().__init__()
        if pool.return_indices:
            raise UserError("rarefy: a MaxPool2d with return_indices=True cannot be rarefied")
        self.kernel_size = _pair(pool.kernel_size)
        self.orig_stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.orig_padding = _pair(pool.padding)
        self.orig_dilation = _pair(pool.dilation)
        self.ceil_mode = bool(pool.ceil_mode)
        self.in_factor = int(in_factor)
        self.out_factor = int(out_factor)
        for s in self.orig_stride:
            if (s * self.in_factor) % self.out_factor:
                raise UserError(f"rarefy: stride {s} at input density x{self.in_factor} cannot be "
                                f"made {self.out_factor}x denser (not divisible)")

    @property
    def stride(self) -> tuple[int, int]:
        """The stride on the dense map."""
        return tuple(s * self.in_factor // self.out_factor for s in self.orig_stride)  # type: ignore[return-value]

    @property
    def padding(self) -> tuple[int, int]:
        return tuple(p * self.in_factor for p in self.orig_padding)  # type: ignore[return-value]

    @property
    def dilation(self) -> tuple[int, int]:
        return tuple(d * self.in_factor for d in self.orig_dilation)  # type: ignore[return-value]

    def _plan(self, dense_len: int, axis: int) -> tuple[int, int]:
        """(output length, extra far-side padding) along one axis for a dense input length."""
        a, b = self.in_factor, self.out_factor
        k, s, p, d = (self.kernel_size[axis], self.orig_stride[axis], self.orig_padding[axis],
                      self.orig_dilation[axis])
        # The dense input holds the original samples at a*x plus fewer than `a` extra ones at
        # the end, so the original length is recoverable.
        orig_len = (dense_len - 1) // a + 1
        n = _pool_out(orig_len, k, s, p, d, self.ceil_mode)
        sd, pd, dd = s * a // b, p * a, d * a
        count = _pool_out(dense_len, k, sd, pd, dd, self.ceil_mode)
        count = min(max(count, b * (n - 1) + 1), b * n)
        need = sd * (count - 1) + dd * (k - 1) + 1  # padded length the last window needs
        extra = max(0, need - (dense_len + 2 * pd))
        return count, extra

    def forward(self, x: Tensor) -> Tensor:
        (ch, eh), (cw, ew) = self._plan(x.shape[-2], 0), self._plan(x.shape[-1], 1)
        ph, pw = self.padding
        if ph or pw or eh or ew:
            x = F.pad(x, (pw, pw + ew, ph, ph + eh), value=-math.inf)
        y = F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, ceil_mode=False)
        return y[..., :ch, :cw]

    def layer_specs(self):
        """Geometry for :mod:`fcnseg.models.geometry` (receptive fields, coordinate maps)."""
        from ..models.geometry import LayerSpec

        yield LayerSpec(kernel=self.kernel_size[0], stride=self.stride[0], pad=self.padding[0],
                        dilation=self.dilation[0])

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, "
                f"in_factor={self.in_factor}, out_factor={self.out_factor}")


def _explicit_padding(conv: nn.Conv2d, name: str) -> tuple[int, int]:
    """A conv's padding as two ints (``'valid'``/``'same'`` resolved where that is exact)."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            if (d * (k - 1)) % 2:
                raise UserError(f"rarefy: layer {name!r} uses padding='same' with an even kernel "
                                "(asymmetric padding); give it explicit padding first")
            pads.append(d * (k - 1) // 2)
        return tuple(pads)  # type: ignore[return-value]
    return _pair(conv.padding)  # type: ignore[return-value]


def _set_conv(conv: nn.Conv2d, name: str, *, stride_div: int = 1, spread: int = 1) -> None:
    """Divide a conv's stride by ``stride_div``; multiply its dilation and padding by ``spread``."""
    if conv.padding_mode != "zeros" and spread > 1:
        # Reflect/replicate/circular padding mirrors about the dense map's last sample, which
        # is not the original's last sample when the dense map has extra shifted samples.
        raise UserError(f"rarefy: layer {name!r} follows the rarefied layer and uses "
                        f"{conv.padding_mode!r} padding, which does not survive rarefaction; "
                        "only zero padding does")
    stride = _pair(conv.stride)
    if any(s % stride_div for s in stride):
        raise UserError(f"rarefy: the stride {stride} of layer {name!r} is not divisible by "
                        f"the factor {stride_div}")
    pad = _explicit_padding(conv, name)
    conv.stride = tuple(s // stride_div for s in stride)
    conv.dilation = tuple(d * spread for d in _pair(conv.dilation))
    conv.padding = tuple(p * spread for p in pad)
    # Non-zero padding modes pad in forward() from this cached list.
    conv._reversed_padding_repeated_twice = [p for p in reversed(conv.padding) for _ in range(2)]


def _set_avgpool(pool: nn.AvgPool2d, name: str, *, stride_div: int = 1, spread: int = 1) -> None:
    kernel = _pair(pool.kernel_size)
    if spread > 1 and kernel != (1, 1):
        raise UserError(f"rarefy: AvgPool2d {name!r} follows the rarefied layer but average "
                        "pooling has no dilation; replace it by a convolution first")
    if pool.ceil_mode:
        raise UserError(f"rarefy: AvgPool2d {name!r} in ceil mode cannot be rarefied")
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if any(s % stride_div for s in stride):
        raise UserError(f"rarefy: the stride {stride} of layer {name!r} is not divisible by "
                        f"the factor {stride_div}")
    pool.stride = tuple(s // stride_div for s in stride)
    pool.padding = tuple(p * spread for p in _pair(pool.padding))


def _as_rarefied_pool(module: nn.Module) -> RarefiedMaxPool2d:
    return module if isinstance(module, RarefiedMaxPool2d) else RarefiedMaxPool2d(module)  # type: ignore[arg-type]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def rarefy(model: nn.Module, layer: str, factor: int) -> nn.Module:
    """A copy of ``model`` whose ``layer`` has its stride divided by ``factor`` and whose
    later layers are rarefied (dilation and padding x ``factor``), so the output is
    ``factor`` times denser in each direction and equals the original's at ``[::f, ::f]``.

    ``layer`` is a module name from ``model.named_modules()`` (e.g. ``"features.30"``
    for pool5 of the VGG16 trunk) naming a ``Conv2d``, ``MaxPool2d`` or ``AvgPool2d``
    whose stride is divisible by ``factor``. The layers *registered* after it are taken
    to be the ones it feeds, which holds for a chain such as ``nn.Sequential`` or a
    trunk (``FCN.backbone``), not for a net whose later modules also read earlier taps;
    ``Conv2d`` and ``MaxPool2d`` are rarefied, point-wise modules (ReLU, BatchNorm,
    Dropout, ...) pass unchanged, and a module whose dense form is not a dilation
    (transposed convolution, average pooling wider than 1, adaptive pooling, upsampling)
    raises :class:`~fcnseg.errors.UserError`: rarefy ``model.backbone`` of an FCN, not
    the whole net, whose head upsamples. Calls compose: rarefy pool4 by 2, then pool5
    by 2 for a 4x denser output. The input model is left untouched.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise UserError(f"rarefy: factor must be a positive integer, got {factor!r}")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.MaxPool2d,
                                                                 nn.AvgPool2d, RarefiedMaxPool2d))]
        raise UserError(f"rarefy: no layer {layer!r} in the model; strided candidates: "
                        f"{', '.join(convs[:20]) or 'none'}")
    target = modules[layer]
    if not isinstance(target, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, RarefiedMaxPool2d)):
        raise UserError(f"rarefy: layer {layer!r} is a {type(target).__name__}; expected a "
                        "Conv2d, MaxPool2d or AvgPool2d")
    out = copy.deepcopy(model)
    if factor == 1:
        return out
    names = list(dict(out.named_modules()))
    start = names.index(layer)
    following = [n for n in names[start + 1:] if not n.startswith(layer + ".")]

    # Check everything first so that a refusal leaves nothing half-done (we work on a copy anyway).
    for name in following:
        mod = out.get_submodule(name)
        if isinstance(mod, _UNSUPPORTED):
            raise UserError(f"rarefy: layer {name!r} ({type(mod).__name__}) follows {layer!r} "
                            "and has no rarefied form; rarefy the trunk only (e.g. model.backbone)")

    mod = out.get_submodule(layer)
    if isinstance(mod, nn.Conv2d):
        _set_conv(mod, layer, stride_div=factor)
    elif isinstance(mod, nn.AvgPool2d):
        _set_avgpool(mod, layer, stride_div=factor)
    else:
        pool = _as_rarefied_pool(mod)
        dense_stride = [s * pool.in_factor for s in pool.orig_stride]
        if any(s % (pool.out_factor * factor) for s in dense_stride):
            raise UserError(f"rarefy: the stride {pool.stride} of layer {layer!r} is not divisible "
                            f"by the factor {factor}")
        pool.out_factor *= factor
        _replace(out, layer, pool)

    for name in following:
        mod = out.get_submodule(name)
        if isinstance(mod, nn.Conv2d):
            _set_conv(mod, name, spread=factor)
        elif isinstance(mod, nn.AvgPool2d):
            _set_avgpool(mod, name, spread=factor)
        elif isinstance(mod, (nn.MaxPool2d, RarefiedMaxPool2d)):
            pool = _as_rarefied_pool(mod)
            pool.in_factor *= factor
            pool.out_factor *= factor
            _replace(out, name, pool)
    return out

