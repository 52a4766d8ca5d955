"""Layer geometry: coordinate maps, crop offsets and receptive fields.

The reference FCNs align a coarse, upsampled score map with a finer one (or with
the input) by a top-left crop. The reference release computes those offsets with
its ``coord_map`` tool from the strides, kernels and pads of the layers in between;
we do the same here, so the offsets are derived, never typed in.

A :class:`CoordMap` says where a layer's output sample ``y`` sits in input
coordinates' terms: ``y = scale * x + offset`` (Caffe's convention). Composing the
maps of all layers from the data to two blobs tells how far one must be shifted
to line up with the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator

from torch import nn


@dataclass(frozen=True)
class LayerSpec:
    """The geometry of one spatial layer (convolution, pooling or deconvolution)."""

    kernel: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    transposed: bool = False

    @property
    def effective_kernel(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


@dataclass(frozen=True)
class CoordMap:
    """An affine map from input to output coordinates: ``y = scale * x + offset``."""

    scale: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)

    @staticmethod
    def of_layer(spec: LayerSpec) -> "CoordMap":
        k = Fraction(spec.effective_kernel)
        if spec.transposed:
            return CoordMap(Fraction(spec.stride), (k - 1) / 2 - spec.pad)
        return CoordMap(Fraction(1, spec.stride), (spec.pad - (k - 1) / 2) / spec.stride)

    def then(self, other: "CoordMap") -> "CoordMap":
        """This map followed by ``other``."""
        return CoordMap(other.scale * self.scale, other.scale * self.offset + other.offset)

    @staticmethod
    def compose(specs: Iterable[LayerSpec]) -> "CoordMap":
        out = CoordMap()
        for spec in specs:
            out = out.then(CoordMap.of_layer(spec))
        return out


def crop_offset(bottom: CoordMap, reference: CoordMap) -> int:
    """Top-left crop offset that aligns blob ``bottom`` with blob ``reference``.

    Both maps go from the same input; they must have the same scale. The offset is
    how many samples of ``bottom`` to skip so that sample ``i`` of the crop lies where
    sample ``i`` of ``reference`` lies (the reference ``crop`` semantics).
    """
    if bottom.scale != reference.scale:
        raise ValueError(f"cannot align blobs of different scales {bottom.scale} and {reference.scale}")
    # both are in samples of the same grid: y_bottom = y_reference + (b_bottom - b_reference)
    delta = bottom.offset - reference.offset
    if delta.denominator != 1 or delta < 0:
        raise ValueError(f"blobs are not alignable by a top-left crop (offset {delta})")
    return int(delta)


def layer_specs(module: nn.Module) -> Iterator[LayerSpec]:
    """The spatial layers of ``module`` along its main path, in forward order.

    Plain convolutions, poolings and transposed convolutions describe themselves;
    a module with several parallel branches (an Inception block, an MBConv block)
    defines ``layer_specs()`` to say which path carries its geometry.
    """
    own = getattr(module, "layer_specs", None)
    if callable(own):
        yield from own()
        return
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        yield LayerSpec(
            kernel=_first(module.kernel_size),
            stride=_first(module.stride),
            pad=_first(module.padding),
            dilation=_first(module.dilation),
            transposed=isinstance(module, nn.ConvTranspose2d),
        )
        return
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        yield LayerSpec(kernel=_first(module.kernel_size), stride=_first(stride), pad=_first(module.padding),
                        dilation=_first(getattr(module, "dilation", 1)))
        return
    for child in module.children():
        yield from layer_specs(child)


def receptive_field(specs: Iterable[LayerSpec]) -> int:
    """Receptive field (in input pixels) of one output sample of the stacked layers."""
    rf, jump = 1, 1
    for spec in specs:
        if spec.transposed:
            continue
        rf += (spec.effective_kernel - 1) * jump
        jump *= spec.stride
    return rf


def total_stride(specs: Iterable[LayerSpec]) -> int:
    stride = Fraction(1)
    for spec in specs:
        stride = stride / spec.stride if spec.transposed else stride * spec.stride
    return int(stride)


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)
