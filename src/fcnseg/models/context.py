"""PASCAL-Context FCNs (``pascalcontext-fcn32s/16s/8s``): the VGG16 nets with 60 outputs.

The reference scores the 59 most frequent PASCAL-Context classes plus background;
layer names and shapes are those of the VOC nets with ``num_output: 60``.
"""
from __future__ import annotations

from torch import nn

from .fcn import FCN
from .registry import register_model
from .vgg import VGG16Trunk

CONTEXT_CLASSES = 60


@register_model("fcn32s_vgg16_context", output_stride=32, trunk="vgg16", default_num_classes=CONTEXT_CLASSES)
def fcn32s_vgg16_context(num_classes: int = CONTEXT_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-32s, VGG16, 59 PASCAL-Context classes + background, as pascalcontext-fcn32s."""
    return FCN(VGG16Trunk(3), num_classes, "32s", learnable_upsampling=learnable_upsampling)


@register_model("fcn16s_vgg16_context", output_stride=16, trunk="vgg16", default_num_classes=CONTEXT_CLASSES)
def fcn16s_vgg16_context(num_classes: int = CONTEXT_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-16s, VGG16, 59 PASCAL-Context classes + background, as pascalcontext-fcn16s."""
    return FCN(VGG16Trunk(3), num_classes, "16s", learnable_upsampling=learnable_upsampling)


@register_model("fcn8s_vgg16_context", output_stride=8, trunk="vgg16", default_num_classes=CONTEXT_CLASSES)
def fcn8s_vgg16_context(num_classes: int = CONTEXT_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, VGG16, 59 PASCAL-Context classes + background, as pascalcontext-fcn8s."""
    return FCN(VGG16Trunk(3), num_classes, "8s", learnable_upsampling=learnable_upsampling)
