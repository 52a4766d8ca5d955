"""Small building blocks shared by the FCN heads: bilinear kernels, crops, Caffe's Scale."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import LayerSpec


def bilinear_kernel(size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A ``size x size`` bilinear interpolation kernel, as the reference ``upsample_filt``.

    For even sizes the centre lies between two taps; for odd sizes on a tap.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).to(dtype)


def bilinear_init_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Set a transposed convolution to bilinear upsampling on the channel diagonal only.

    Class ``i`` upsamples into class ``i``; off-diagonal filters are zero (the reference
    ``interp`` surgery). Works for the grouped/ungrouped layouts alike.
    """
    in_ch, out_per_group, kh, kw = deconv.weight.shape
    if kh != kw:
        raise ValueError("bilinear init needs a square kernel")
    kernel = bilinear_kernel(kh, deconv.weight.dtype)
    with torch.no_grad():
        deconv.weight.zero_()
        for c in range(min(in_ch, out_per_group * deconv.groups)):
            deconv.weight[c, c % out_per_group] = kernel
        if deconv.bias is not None:
            deconv.bias.zero_()
    return deconv


class Upscore(nn.ConvTranspose2d):
    """A bias-free transposed convolution initialised to bilinear upsampling.

    ``edge_pad=True`` replicates one border sample on each side first: with an odd
    kernel this keeps every output sample between two input samples for trunks
    whose samples sit at ``stride * j`` (the Lite0 trunk), so nothing is extrapolated
    with zeros. The extra sample is part of the geometry the crops are derived from.
    """

    def __init__(self, channels: int, kernel: int, stride: int, *, edge_pad: bool = False,
                 learnable: bool = False) -> None:
        super().__init__(channels, channels, kernel, stride=stride, bias=False)
        self.edge_pad = edge_pad
        bilinear_init_(self)
        self.weight.requires_grad_(learnable)

    def layer_specs(self) -> Iterator[LayerSpec]:
        if self.edge_pad:
            yield LayerSpec(kernel=1, pad=1)
        yield LayerSpec(kernel=self.kernel_size[0], stride=self.stride[0], transposed=True)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if self.edge_pad:
            x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return super().forward(x)


class Scale(nn.Module):
    """Caffe's ``Scale`` layer with a fixed per-channel factor (the at-once FCN-8s
    ``scale_pool4`` = 0.01 and ``scale_pool3`` = 0.0001). Stored as a ``(C,)`` blob so
    it maps one-to-one onto the reference caffemodel."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(value)), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def crop_like(x: Tensor, offset: int, height: int, width: int) -> Tensor:
    """Top-left crop of ``x`` at ``(offset, offset)`` to ``height x width`` (Caffe ``Crop``, axis 2)."""
    return x[:, :, offset:offset + height, offset:offset + width]


def zero_init_(conv: nn.Conv2d) -> nn.Conv2d:
    """Score layers start at zero, as in the reference (the upsampled output then starts at zero)."""
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
    return conv
