"""The VGG16 trunk of the reference FCNs (conv1_1 pad 100, ceil-mode pooling, fc6/fc7 as convs).

Convolution and pooling layers live in ``features`` with torchvision's indices, so
a torchvision-format VGG16 state dict loads into ``features.N``; fc6/fc7 come from
its classifier through :func:`fcnseg.surgery.convolutionalize`.
"""
from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from .geometry import LayerSpec, layer_specs

# (channels per conv, ...) per block, as VGG16 configuration "D".
_VGG16_BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _caffe_conv_names() -> list[str]:
    return [f"conv{b + 1}_{i + 1}" for b, blk in enumerate(_VGG16_BLOCKS) for i in range(len(blk))]


class VGG16Trunk(nn.Module):
    """VGG16 up to fc7, returning the pool3 / pool4 / fc7 taps (strides 8 / 16 / 32)."""

    out_channels = {"pool3": 256, "pool4": 512, "out": 4096}
    normalization = "caffe"

    def __init__(self, in_channels: int = 3, first_pad: int = 100) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.caffe_names: dict[str, str] = {}
        self.tap_index: dict[str, int] = {}
        channels = in_channels
        names = iter(_caffe_conv_names())
        for b, block in enumerate(_VGG16_BLOCKS):
            for out in block:
                pad = first_pad if not layers else 1
                self.caffe_names[next(names)] = f"features.{len(layers)}"
                layers += [nn.Conv2d(channels, out, 3, padding=pad), nn.ReLU(inplace=True)]
                channels = out
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            self.tap_index[f"pool{b + 1}"] = len(layers) - 1
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)  # element-wise, as Caffe's Dropout
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.caffe_names.update(fc6="fc6", fc7="fc7")
        self._taps = {self.tap_index["pool3"]: "pool3", self.tap_index["pool4"]: "pool4"}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out[self._taps[i]] = x
        x = self.drop6(self.relu6(self.fc6(x)))
        out["out"] = self.drop7(self.relu7(self.fc7(x)))
        return out

    def tap_specs(self, tap: str) -> list[LayerSpec]:
        """Spatial layers from the input to ``tap`` (for crop offsets and receptive fields)."""
        if tap == "out":
            return list(layer_specs(self.features)) + list(layer_specs(self.fc6)) + list(layer_specs(self.fc7))
        return list(layer_specs(self.features[: self.tap_index[tap] + 1]))

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from self.tap_specs("out")
