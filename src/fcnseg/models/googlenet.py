"""GoogLeNet (Inception v1, as Caffe's ``bvlc_googlenet``) trunk for FCN-32s.

As in the paper: only the final loss head is used (the two auxiliary heads are
gone), the last average pooling is dropped, and the 1024-channel inception_5b
output is scored directly. conv1 gets a large pad, like the VGG and AlexNet
trunks, so that every input size yields at least one score sample.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from .geometry import LayerSpec, layer_specs

# name: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
_INCEPTION = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}


def _conv_relu(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=pad), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel branches concatenated; every branch keeps the sampling grid."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.branch1 = _conv_relu(cin, c1, 1)
        self.branch3 = nn.Sequential(_conv_relu(cin, c3r, 1), _conv_relu(c3r, c3, 3, pad=1))
        self.branch5 = nn.Sequential(_conv_relu(cin, c5r, 1), _conv_relu(c5r, c5, 5, pad=2))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True), _conv_relu(cin, cp, 1))

    def layer_specs(self) -> Iterator[LayerSpec]:
        # The 5x5 branch has the widest reach; all branches are centred alike.
        yield from layer_specs(self.branch5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class GoogLeNetTrunk(nn.Module):
    out_channels = {"out": 1024}
    normalization = "caffe"

    def __init__(self, in_channels: int = 3, first_pad: int = 99) -> None:
        super().__init__()
        lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        layers: dict[str, nn.Module] = {
            "conv1": _conv_relu(in_channels, 64, 7, stride=2, pad=first_pad),
            "pool1": pool(), "norm1": lrn(),
            "conv2_reduce": _conv_relu(64, 64, 1),
            "conv2": _conv_relu(64, 192, 3, pad=1),
            "norm2": lrn(), "pool2": pool(),
        }
        for name, cfg in _INCEPTION.items():
            layers[name] = Inception(*cfg)
            if name == "inception_3b":
                layers["pool3"] = pool()
            if name == "inception_4e":
                layers["pool4"] = pool()
        self.features = nn.Sequential()
        for name, layer in layers.items():
            self.features.add_module(name, layer)
        self.drop = nn.Dropout(0.4)
        self.caffe_names = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.drop(self.features(x))}

    def tap_specs(self, tap: str) -> list[LayerSpec]:
        if tap != "out":
            raise KeyError(f"GoogLeNet trunk has no tap {tap!r} (FCN-GoogLeNet is 32s only)")
        return list(layer_specs(self.features))

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from self.tap_specs("out")
