"""Multi-task FCNs: one trunk, several FCN heads (the paper's SIFT Flow nets).

``siftflow-fcn32s/16s/8s`` score one VGG16 trunk twice: 33 semantic classes
(``score_fr_sem``, ``upscore2_sem``, ...) and 3 geometric classes (``..._geo``), each
head with its own skips, upsampling and crops, trained with the sum of both losses.
Here each head is a generic :class:`~fcnseg.models.fcn.FCN` that holds only the
trunk's geometry (no weights), so the trunk runs once per forward and is stored once.

``forward`` returns ``{head: N x classes x H x W}``; :func:`multitask_loss` sums the heads' losses.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

from torch import Tensor, nn

from ..errors import UserError
from .fcn import FCN, Variant
from .geometry import LayerSpec
from .lite0 import Lite0Trunk
from .registry import register_model
from .vgg import VGG16Trunk

SIFTFLOW_SEM_CLASSES = 33
SIFTFLOW_GEO_CLASSES = 3


class TrunkGeometry(nn.Module):
    """A weightless stand-in for a trunk: its tap channels, normalization and geometry.

    Lets an :class:`FCN` build its score/upsampling layers and derive its crops for a
    trunk that lives elsewhere (shared by several heads) without owning it.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.out_channels = dict(trunk.out_channels)
        self.normalization = getattr(trunk, "normalization", "imagenet")
        self.caffe_names: dict[str, str] = {}
        self._specs = {tap: list(trunk.tap_specs(tap)) for tap in self.out_channels}

    def tap_specs(self, tap: str) -> list[LayerSpec]:
        return list(self._specs[tap])

    def layer_specs(self) -> Iterator[LayerSpec]:
        yield from self.tap_specs("out")

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - never called
        raise RuntimeError("TrunkGeometry holds geometry only; run the shared trunk instead")


class MultiTaskFCN(nn.Module):
    """A shared trunk (``backbone``) and one FCN head per task (``heads[name]``).

    Args:
        backbone: the trunk, as for :class:`FCN`.
        head_classes: head name -> number of classes, in output order.
        variant: ``"32s"``, ``"16s"`` or ``"8s"`` for every head.
        main_head: the head whose class count is ``num_classes`` (default: the first);
            tools that expect one output (metrics' primary head) use it.
        fcn_options: passed to each head's :class:`FCN` (``aligned_upsampling``, ...).
    """

    def __init__(self, backbone: nn.Module, head_classes: Mapping[str, int], variant: Variant = "8s", *,
                 main_head: str | None = None, **fcn_options) -> None:
        super().__init__()
        if not head_classes:
            raise UserError("a multi-task model needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: FCN(TrunkGeometry(backbone), int(n), variant, **fcn_options)
                                    for name, n in head_classes.items()})
        self.main_head = main_head or next(iter(head_classes))
        if self.main_head not in self.heads:
            raise UserError(f"main_head {self.main_head!r} is not one of the heads {', '.join(self.heads)}")
        self.head_classes = {name: int(n) for name, n in head_classes.items()}
        self.num_classes = self.head_classes[self.main_head]
        first = self.heads[self.main_head]
        self.variant = first.variant
        self.output_stride = first.output_stride
        self.normalization = first.normalization

    @property
    def crop_offsets(self) -> dict[str, int]:
        return self.heads[self.main_head].crop_offsets

    @property
    def receptive_field(self) -> int:
        return self.heads[self.main_head].receptive_field

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.backbone(x)
        return {name: head.upsample_scores(head.score_taps(feats), x.shape[2], x.shape[3])
                for name, head in self.heads.items()}

    def caffe_layer_names(self) -> dict[str, str]:
        """Reference names: trunk as usual, head layers suffixed by the head (``score_fr_sem``)."""
        names = {k: f"backbone.{v}" for k, v in getattr(self.backbone, "caffe_names", {}).items()}
        for head_name, head in self.heads.items():
            for caffe, path in head.caffe_layer_names().items():
                names[f"{caffe}_{head_name}"] = f"heads.{head_name}.{path}"
        return names


def multitask_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
                   loss_fn: Callable[[Tensor, Tensor], Tensor],
                   weights: Mapping[str, float] | None = None) -> Tensor:
    """The sum over heads of ``loss_fn(outputs[head], targets[head])`` (times ``weights[head]``, default 1).

    The reference SIFT Flow nets have one SoftmaxWithLoss per head and Caffe sums
    them with weight 1 each. Every head needs a target and every target a head.
    """
    if set(outputs) != set(targets):
        raise UserError(f"the model's heads {sorted(outputs)} do not match the label maps {sorted(targets)}")
    total: Tensor | None = None
    for name, out in outputs.items():
        loss = loss_fn(out, targets[name])
        if weights is not None:
            loss = loss * float(weights.get(name, 1.0))
        total = loss if total is None else total + loss
    assert total is not None
    return total


def parse_head_classes(spec: Mapping[str, int] | str) -> dict[str, int]:
    """Head sizes from a mapping or a ``"name:classes,name:classes"`` string (config or CLI)."""
    if isinstance(spec, str):
        out: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, count = part.partition(":")
            if not sep or not name.strip() or not count.strip().isdigit():
                raise UserError(f"head spec {spec!r}: expected name:classes[,name:classes...], e.g. geo:3")
            out[name.strip()] = int(count)
        spec = out
    result = {str(k): int(v) for k, v in spec.items()}
    bad = [k for k, v in result.items() if v < 1]
    if bad:
        raise UserError(f"head {bad[0]!r} must have >= 1 classes, got {result[bad[0]]}")
    return result


# --------------------------------------------------------------------------- builders
def _siftflow(num_classes: int, geo_classes: int, variant: Variant, learnable_upsampling: bool) -> nn.Module:
    return MultiTaskFCN(VGG16Trunk(3), {"sem": num_classes, "geo": geo_classes}, variant,
                        learnable_upsampling=learnable_upsampling)


@register_model("fcn32s_vgg16_siftflow", output_stride=32, trunk="vgg16",
                default_num_classes=SIFTFLOW_SEM_CLASSES, two_heads=True)
def fcn32s_vgg16_siftflow(num_classes: int = SIFTFLOW_SEM_CLASSES, geo_classes: int = SIFTFLOW_GEO_CLASSES,
                          learnable_upsampling: bool = False) -> nn.Module:
    """FCN-32s, VGG16, two heads (sem 33, geo 3) on one trunk, as siftflow-fcn32s."""
    return _siftflow(num_classes, geo_classes, "32s", learnable_upsampling)


@register_model("fcn16s_vgg16_siftflow", output_stride=16, trunk="vgg16",
                default_num_classes=SIFTFLOW_SEM_CLASSES, two_heads=True)
def fcn16s_vgg16_siftflow(num_classes: int = SIFTFLOW_SEM_CLASSES, geo_classes: int = SIFTFLOW_GEO_CLASSES,
                          learnable_upsampling: bool = False) -> nn.Module:
    """FCN-16s, VGG16, two heads (sem 33, geo 3) on one trunk, as siftflow-fcn16s."""
    return _siftflow(num_classes, geo_classes, "16s", learnable_upsampling)


@register_model("fcn8s_vgg16_siftflow", output_stride=8, trunk="vgg16",
                default_num_classes=SIFTFLOW_SEM_CLASSES, two_heads=True)
def fcn8s_vgg16_siftflow(num_classes: int = SIFTFLOW_SEM_CLASSES, geo_classes: int = SIFTFLOW_GEO_CLASSES,
                         learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, VGG16, two heads (sem 33, geo 3) on one trunk, as siftflow-fcn8s."""
    return _siftflow(num_classes, geo_classes, "8s", learnable_upsampling)


@register_model("fcn8s_lite0_multitask", output_stride=8, trunk="efficientnet-lite0",
                default_num_classes=SIFTFLOW_SEM_CLASSES, two_heads=True)
def fcn8s_lite0_multitask(num_classes: int = SIFTFLOW_SEM_CLASSES, aux_classes: Mapping[str, int] | str = "geo:3",
                          main_head: str = "sem", pretrained_backbone: bool = False, in_channels: int = 3,
                          learnable_upsampling: bool = False) -> nn.Module:
    """FCN-8s, EfficientNet-Lite0, a main head (num_classes) plus aux heads (default geo:3)."""
    aux = parse_head_classes(aux_classes)
    if main_head in aux:
        raise UserError(f"aux_classes repeats the main head {main_head!r}")
    trunk = Lite0Trunk(in_channels)
    if pretrained_backbone:
        trunk.load_pretrained()
    return MultiTaskFCN(trunk, {main_head: num_classes, **aux}, "8s", main_head=main_head,
                        aligned_upsampling=True, learnable_upsampling=learnable_upsampling)
