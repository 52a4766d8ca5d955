"""Builders of the named FCNs of the paper and of the modern EfficientNet-Lite variants."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .alexnet import AlexNetTrunk
from .efficientnet_lite import EfficientNetLiteTrunk
from .fcn import FCN
from .googlenet import GoogLeNetTrunk
from .registry import register_model
from .vgg import VGG16Trunk


def _vgg(num_classes: int, variant: str, atonce: bool = False, in_channels: int = 3,
         learnable_upsampling: bool = False) -> FCN:
    return FCN(VGG16Trunk(in_channels), num_classes, variant, atonce=atonce,
               learnable_upsampling=learnable_upsampling)


@register_model("fcn32s_vgg16", output_stride=32, trunk="vgg16")
def fcn32s_vgg16(num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-32s, VGG16 trunk, as voc-fcn32s."""
    return _vgg(num_classes, "32s", in_channels=in_channels, learnable_upsampling=learnable_upsampling)


@register_model("fcn16s_vgg16", output_stride=16, trunk="vgg16")
def fcn16s_vgg16(num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-16s, VGG16 trunk, as voc-fcn16s."""
    return _vgg(num_classes, "16s", in_channels=in_channels, learnable_upsampling=learnable_upsampling)


@register_model("fcn8s_vgg16", output_stride=8, trunk="vgg16")
def fcn8s_vgg16(num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, VGG16 trunk, as voc-fcn8s (staged training)."""
    return _vgg(num_classes, "8s", in_channels=in_channels, learnable_upsampling=learnable_upsampling)


@register_model("fcn8s_atonce_vgg16", output_stride=8, trunk="vgg16")
def fcn8s_atonce_vgg16(num_classes: int = 21, in_channels: int = 3,
                       learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s at-once, VGG16 trunk, pool4 x0.01 and pool3 x0.0001, as voc-fcn8s-atonce."""
    return _vgg(num_classes, "8s", atonce=True, in_channels=in_channels,
                learnable_upsampling=learnable_upsampling)


@register_model("fcn32s_alexnet", output_stride=32, trunk="alexnet")
def fcn32s_alexnet(num_classes: int = 21, in_channels: int = 3) -> nn.Module:
    """FCN-32s, CaffeNet trunk, 63x63 upscore, as voc-fcn-alexnet."""
    return FCN(AlexNetTrunk(in_channels), num_classes, "32s", final_kernel=63)


@register_model("fcn32s_googlenet", output_stride=32, trunk="googlenet")
def fcn32s_googlenet(num_classes: int = 21, in_channels: int = 3) -> nn.Module:
    """FCN-32s, GoogLeNet (Inception v1) trunk, final loss head only, as in the paper."""
    # an odd 63x63 upscore (as FCN-AlexNet) makes the derived crop offset integral
    return FCN(GoogLeNetTrunk(in_channels), num_classes, "32s", final_kernel=63)


def _lite(num_classes: int, variant: str, pretrained_backbone: bool, in_channels: int,
          learnable_upsampling: bool, trunk_variant: str = "lite0") -> FCN:
    trunk = EfficientNetLiteTrunk(trunk_variant, in_channels)
    if pretrained_backbone:
        trunk.load_pretrained()
    return FCN(trunk, num_classes, variant, aligned_upsampling=True, learnable_upsampling=learnable_upsampling)


def _lite_builder(variant: str, trunk_variant: str) -> Callable[..., nn.Module]:
    """The builder of ``fcn{variant}_{trunk_variant}``: the FCN head on an EfficientNet-Lite trunk."""
    def builder(num_classes: int = 21, pretrained_backbone: bool = False, in_channels: int = 3,
                learnable_upsampling: bool = False) -> nn.Module:
        return _lite(num_classes, variant, pretrained_backbone, in_channels, learnable_upsampling, trunk_variant)

    builder.__name__ = builder.__qualname__ = f"fcn{variant}_{trunk_variant}"
    builder.__doc__ = (f"FCN-{variant}, EfficientNet-{trunk_variant.replace('lite', 'Lite')} trunk "
                       "(ImageNet weights with pretrained_backbone=True).")
    return builder


# fcn32s/16s/8s/4s_lite0, _lite1, _lite2: one trunk definition, three compound-scaling points
for _trunk in ("lite0", "lite1", "lite2"):
    for _variant in ("32s", "16s", "8s", "4s"):
        register_model(f"fcn{_variant}_{_trunk}", output_stride=int(_variant[:-1]), trunk=f"efficientnet-{_trunk}",
                       default_num_classes=21)(_lite_builder(_variant, _trunk))
