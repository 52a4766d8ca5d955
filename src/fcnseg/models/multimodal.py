"""Multi-modal FCNs (the paper's NYUDv2 nets): early fusion RGB-D, late fusion RGB + HHA.

* Early fusion (``nyud-fcn32s-color-d``): one trunk on the channel-concatenated
  modalities. conv1 is widened by :func:`fcnseg.surgery.add_input_channels`, so the
  depth channel's filters start as the mean of the RGB filters (also after loading
  ImageNet weights for the Lite0 trunk).
* Late fusion (``nyud-fcn32s-color-hha``): one trunk and score layers per modality;
  the streams' scores are summed with weights 0.5/0.5 *before* the (shared, fixed)
  upsampling, as the reference's ``score_fused`` Eltwise layer. For 16s nets the
  pool4 skip scores are fused the same way; since every layer after the score
  layers is linear this equals averaging two complete FCN-16s nets.

Both accept a dict of modality tensors (``{"rgb": N x 3 x H x W, "depth": N x 1 x H x W}``,
``{"rgb": ..., "hha": ...}``) or one tensor with the modalities' channels
concatenated in the order of ``model.modalities`` (RGB-D: 4 channels; RGB + HHA: 6).
HHA alone is the plain net on a 3-channel input (``fcn32s_vgg16`` with 40 classes).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .fcn import FCN, Variant
from .layers import Upscore
from .lite0 import Lite0Trunk
from .registry import register_model
from .vgg import VGG16Trunk

NYUD_CLASSES = 40
RGBD = {"rgb": 3, "depth": 1}
RGB_HHA = {"rgb": 3, "hha": 3}
# Caffe layer-name suffixes of the reference late-fusion streams (conv1_1color, score_frhha, ...).
_CAFFE_SUFFIX = {"rgb": "color", "hha": "hha", "depth": "depth"}


def _split_inputs(x: Tensor | Mapping[str, Tensor], modalities: Mapping[str, int]) -> list[Tensor]:
    """One tensor per modality, from a dict or from the channel-concatenated tensor."""
    if isinstance(x, Mapping):
        missing = [m for m in modalities if m not in x]
        if missing:
            raise ValueError(f"input dict lacks modality {missing[0]!r}; expected keys {list(modalities)}")
        return [x[m] for m in modalities]
    total = sum(modalities.values())
    if x.shape[1] != total:
        raise ValueError(f"expected {total} input channels ({', '.join(f'{m}: {c}' for m, c in modalities.items())}), "
                         f"got {x.shape[1]}")
    return list(torch.split(x, list(modalities.values()), dim=1))


class EarlyFusionFCN(FCN):
    """An FCN on channel-concatenated modalities (RGB-D).

    ``backbone`` is built for the first modality (e.g. RGB, possibly with ImageNet
    weights loaded); its first convolution is then widened to all modalities'
    channels with the extra channels' filters set to the mean of the existing ones.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, variant: Variant = "8s", *,
                 modalities: Mapping[str, int] = RGBD, caffe_first_layer_suffix: str = "_bgrd",
                 **fcn_options) -> None:
        super().__init__(backbone, num_classes, variant, **fcn_options)
        from ..surgery import add_input_channels, find_first_conv  # lazy: surgery imports fcnseg.models

        self.modalities = dict(modalities)
        add_input_channels(self, sum(self.modalities.values()))
        parent, name, _ = find_first_conv(self)
        paths = {id(m): p for p, m in self.named_modules()}
        self._first_conv_path = f"{paths[id(parent)]}.{name}"
        self._caffe_first_suffix = caffe_first_layer_suffix

    def forward(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:  # type: ignore[override]
        if isinstance(x, Mapping):
            x = torch.cat(_split_inputs(x, self.modalities), dim=1)
        return super().forward(x)

    def caffe_layer_names(self) -> dict[str, str]:
        """As :meth:`FCN.caffe_layer_names`, the first conv named as the reference's (``conv1_1_bgrd``)."""
        return {(k + self._caffe_first_suffix if v == self._first_conv_path else k): v
                for k, v in super().caffe_layer_names().items()}


class LateFusionFCN(nn.Module):
    """One FCN stream per modality; tap scores fused by a weighted sum, then upsampled once.

    ``streams[m]`` is a full :class:`FCN` (trunk + score layers) for modality ``m``, so a
    single-modality net transplants into it by name
    (``transplant(hha_net, model, prefix="streams.hha.")``). Only the first stream
    keeps upsampling layers: the fused scores are upsampled once, as the reference
    does, and the others' copies would never run.
    """

    def __init__(self, trunks: Mapping[str, nn.Module], num_classes: int, variant: Variant = "32s", *,
                 fusion_weights: Mapping[str, float] | None = None, **fcn_options) -> None:
        super().__init__()
        if len(trunks) < 2:
            raise ValueError("late fusion needs at least two streams")
        self.streams = nn.ModuleDict({m: FCN(t, num_classes, variant, **fcn_options) for m, t in trunks.items()})
        for stream in list(self.streams.values())[1:]:
            for name, child in list(stream.named_children()):
                if isinstance(child, Upscore):
                    delattr(stream, name)
        weights = fusion_weights or {m: 1.0 / len(trunks) for m in trunks}
        if set(weights) != set(trunks):
            raise ValueError(f"fusion_weights keys {sorted(weights)} != streams {sorted(trunks)}")
        self.fusion_weights = {m: float(weights[m]) for m in trunks}
        from ..surgery import find_first_conv  # lazy: surgery imports fcnseg.models

        self.modalities = {m: find_first_conv(s)[2].in_channels for m, s in self.streams.items()}
        first = self._first
        self.num_classes = num_classes
        self.variant = first.variant
        self.output_stride = first.output_stride
        self.normalization = first.normalization

    @property
    def _first(self) -> FCN:
        return next(iter(self.streams.values()))

    @property
    def crop_offsets(self) -> dict[str, int]:
        return self._first.crop_offsets

    @property
    def receptive_field(self) -> int:
        return self._first.receptive_field

    def forward(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        inputs = _split_inputs(x, self.modalities)
        fused: dict[str, Tensor] = {}
        for (m, stream), xm in zip(self.streams.items(), inputs):
            w = self.fusion_weights[m]
            for tap, score in stream.score_taps(stream.backbone(xm)).items():
                fused[tap] = fused[tap] + w * score if tap in fused else w * score
        return self._first.upsample_scores(fused, inputs[0].shape[2], inputs[0].shape[3])

    def caffe_layer_names(self) -> dict[str, str]:
        """Reference names: per-stream layers suffixed (``conv1_1color``, ``score_frhha``), shared ``upscore``."""
        names: dict[str, str] = {}
        for m, stream in self.streams.items():
            suffix = _CAFFE_SUFFIX.get(m, m)
            for caffe, path in stream.caffe_layer_names().items():
                shared = isinstance(stream.get_submodule(path), Upscore)
                names[caffe if shared else caffe + suffix] = f"streams.{m}.{path}"
        return names


# --------------------------------------------------------------------------- builders
def _rgbd_vgg(num_classes: int, variant: Variant, learnable_upsampling: bool) -> nn.Module:
    return EarlyFusionFCN(VGG16Trunk(3), num_classes, variant, learnable_upsampling=learnable_upsampling)


def _rgb_hha_vgg(num_classes: int, variant: Variant, learnable_upsampling: bool) -> nn.Module:
    return LateFusionFCN({"rgb": VGG16Trunk(3), "hha": VGG16Trunk(3)}, num_classes, variant,
                         learnable_upsampling=learnable_upsampling)


def _lite0_trunk(pretrained_backbone: bool) -> Lite0Trunk:
    trunk = Lite0Trunk(3)
    if pretrained_backbone:
        trunk.load_pretrained()
    return trunk


@register_model("fcn32s_vgg16_rgbd", output_stride=32, trunk="vgg16",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn32s_vgg16_rgbd(num_classes: int = NYUD_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-32s, VGG16, early fusion RGB-D (4 channels), as nyud-fcn32s-color-d."""
    return _rgbd_vgg(num_classes, "32s", learnable_upsampling)


@register_model("fcn16s_vgg16_rgbd", output_stride=16, trunk="vgg16",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn16s_vgg16_rgbd(num_classes: int = NYUD_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-16s, VGG16, early fusion RGB-D (4 channels); the 16s form of nyud-fcn32s-color-d."""
    return _rgbd_vgg(num_classes, "16s", learnable_upsampling)


@register_model("fcn32s_vgg16_rgb_hha", output_stride=32, trunk="vgg16 x2",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn32s_vgg16_rgb_hha(num_classes: int = NYUD_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-32s, two VGG16 streams (RGB, HHA), scores summed 0.5/0.5, as nyud-fcn32s-color-hha."""
    return _rgb_hha_vgg(num_classes, "32s", learnable_upsampling)


@register_model("fcn16s_vgg16_rgb_hha", output_stride=16, trunk="vgg16 x2",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn16s_vgg16_rgb_hha(num_classes: int = NYUD_CLASSES, learnable_upsampling: bool = False) -> nn.Module:
    """FCN-16s, two VGG16 streams (RGB, HHA), fr and pool4 scores summed 0.5/0.5 (paper's best NYUD net)."""
    return _rgb_hha_vgg(num_classes, "16s", learnable_upsampling)


@register_model("fcn8s_lite0_rgbd", output_stride=8, trunk="efficientnet-lite0",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn8s_lite0_rgbd(num_classes: int = NYUD_CLASSES, pretrained_backbone: bool = False,
                     learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, EfficientNet-Lite0, early fusion RGB-D (depth stem filters = mean of RGB ones)."""
    return EarlyFusionFCN(_lite0_trunk(pretrained_backbone), num_classes, "8s", aligned_upsampling=True,
                          learnable_upsampling=learnable_upsampling)


@register_model("fcn8s_lite0_rgb_hha", output_stride=8, trunk="efficientnet-lite0 x2",
                default_num_classes=NYUD_CLASSES, multi_input=True)
def fcn8s_lite0_rgb_hha(num_classes: int = NYUD_CLASSES, pretrained_backbone: bool = False,
                        learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, two EfficientNet-Lite0 streams (RGB, HHA), scores summed 0.5/0.5."""
    trunks = {"rgb": _lite0_trunk(pretrained_backbone), "hha": _lite0_trunk(pretrained_backbone)}
    return LateFusionFCN(trunks, num_classes, "8s", aligned_upsampling=True,
                         learnable_upsampling=learnable_upsampling)
