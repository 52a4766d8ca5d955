"""The generic FCN head: score, upsample, fuse skips, crop (FCN-32s / 16s / 8s, and 4s).

One class serves every trunk. The trunk returns its stride-8, -16 and -32 taps
(``pool3``, ``pool4``, ``out``; ``pool2`` at stride 4 too for FCN-4s, which carries the
paper's skip pattern one step further, for thin classes: section 4.2 stopped at 8s on
PASCAL, where it saw diminishing returns); the head scores them with 1x1 convolutions,
upsamples with bilinear-initialised transposed convolutions and sums. Every crop
offset is derived from the layer geometry (:mod:`.geometry`), exactly as the
reference ``coord_map`` does, so the output has the input's size for any size.

Layer names are the reference Caffe names (``score_fr``, ``upscore2``,
``score_pool4``, ``upscore_pool4``, ``score_pool3``, ``upscore8``, ``upscore16``,
``upscore``, ``scale_pool4``, ``scale_pool3``; FCN-4s adds ``upscore_pool3``, ``score_pool2``
and ``upscore4`` by the same pattern), so weights map one-to-one.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .geometry import CoordMap, LayerSpec, crop_offset, layer_specs, receptive_field
from .layers import Scale, Upscore, crop_like, zero_init_

Variant = Literal["32s", "16s", "8s", "4s"]
VARIANTS = ("32s", "16s", "8s", "4s")


class FCN(nn.Module):
    """A fully convolutional network: ``backbone`` + skip head.

    Args:
        backbone: a trunk with ``forward(x) -> {"pool3", "pool4", "out"}``,
            ``out_channels`` and ``tap_specs(tap)`` (and ``pool2`` for ``"4s"``).
        num_classes: number of output score maps.
        variant: ``"32s"``, ``"16s"``, ``"8s"`` or ``"4s"`` (how many skips are fused).
        atonce: scale pool4 by 0.01 and pool3 by 0.0001 before scoring (at-once FCN-8s).
        aligned_upsampling: use odd bilinear kernels with one replicated border
            sample (trunks whose samples sit at ``stride * j``, e.g. Lite0) instead
            of the reference even kernels (trunks padded by 100, e.g. VGG16).
        learnable_upsampling: train the transposed convolutions (the reference
            keeps them fixed at bilinear).
        final_kernel: kernel of the last upsampling layer (AlexNet uses 63).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, variant: Variant = "8s", *,
                 atonce: bool = False, aligned_upsampling: bool = False,
                 learnable_upsampling: bool = False, final_kernel: int | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if variant == "4s" and atonce:
            raise ValueError("atonce scales the reference FCN-8s's skips; there is no at-once FCN-4s")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.variant = variant
        self.output_stride = int(variant[:-1])
        self.normalization = getattr(backbone, "normalization", "imagenet")
        ch = backbone.out_channels

        def up(factor: int, kernel: int | None = None) -> Upscore:
            if kernel is None:
                kernel = 2 * factor - 1 if aligned_upsampling else 2 * factor
            return Upscore(num_classes, kernel, factor, edge_pad=aligned_upsampling,
                           learnable=learnable_upsampling)

        self.score_fr = zero_init_(nn.Conv2d(ch["out"], num_classes, 1))
        if variant == "32s":
            self.upscore = up(32, final_kernel)
        else:
            self.upscore2 = up(2)
            if atonce:
                self.scale_pool4 = Scale(ch["pool4"], 0.01)
            self.score_pool4 = zero_init_(nn.Conv2d(ch["pool4"], num_classes, 1))
            if variant == "16s":
                self.upscore16 = up(16, final_kernel)
            else:
                self.upscore_pool4 = up(2)
                if atonce:
                    self.scale_pool3 = Scale(ch["pool3"], 0.0001)
                self.score_pool3 = zero_init_(nn.Conv2d(ch["pool3"], num_classes, 1))
                if variant == "8s":
                    self.upscore8 = up(8, final_kernel)
                else:
                    self.upscore_pool3 = up(2)
                    self.score_pool2 = zero_init_(nn.Conv2d(ch["pool2"], num_classes, 1))
                    self.upscore4 = up(4, final_kernel)
        self.atonce = atonce
        self._derive_offsets()

    # ------------------------------------------------------------------ geometry
    def _derive_offsets(self) -> None:
        """Compute the crops from the layers' strides, kernels and pads."""
        trunk = self.backbone

        def fuse(coarse: CoordMap, upsampler: nn.Module, tap: str) -> tuple[CoordMap, int, bool]:
            up_map = coarse.then(CoordMap.compose(layer_specs(upsampler)))
            skip_map = CoordMap.compose(trunk.tap_specs(tap))
            delta = skip_map.offset - up_map.offset
            if delta >= 0:  # reference case: crop the skip scores to the upsampled map
                return up_map, crop_offset(skip_map, up_map), True
            return skip_map, crop_offset(up_map, skip_map), False

        score_map = CoordMap.compose(trunk.tap_specs("out"))
        self.skip_offsets: dict[str, tuple[int, bool]] = {}
        if self.variant == "32s":
            final = self.upscore
        else:
            score_map, off, crop_skip = fuse(score_map, self.upscore2, "pool4")
            self.skip_offsets["pool4"] = (off, crop_skip)
            if self.variant == "16s":
                final = self.upscore16
            else:
                score_map, off, crop_skip = fuse(score_map, self.upscore_pool4, "pool3")
                self.skip_offsets["pool3"] = (off, crop_skip)
                if self.variant == "8s":
                    final = self.upscore8
                else:
                    score_map, off, crop_skip = fuse(score_map, self.upscore_pool3, "pool2")
                    self.skip_offsets["pool2"] = (off, crop_skip)
                    final = self.upscore4
        out_map = score_map.then(CoordMap.compose(layer_specs(final)))
        self.final_offset = crop_offset(out_map, CoordMap())

    @property
    def crop_offsets(self) -> dict[str, int]:
        """The derived crop offsets, keyed like the reference Crop layers."""
        out = {f"score_{tap}c": off for tap, (off, _) in self.skip_offsets.items()}
        out["score"] = self.final_offset
        return out

    def layer_specs(self) -> list[LayerSpec]:
        return self.backbone.tap_specs("out")

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.backbone.tap_specs("out"))

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _fuse(up: Tensor, skip: Tensor, offset: int, crop_skip: bool) -> Tensor:
        if crop_skip:
            return up + crop_like(skip, offset, up.shape[2], up.shape[3])
        return crop_like(up, offset, skip.shape[2], skip.shape[3]) + skip

    def score_taps(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Score the trunk's taps (``out``, ``pool4``, ``pool3``, ``pool2``) with the 1x1 score layers.

        Split from :meth:`upsample_scores` because the scores are linear in the layers
        that follow: late fusion averages several streams' tap scores and multi-task
        nets score one trunk with several heads, then upsample once per output.
        """
        scores = {"out": self.score_fr(feats["out"])}
        if self.variant != "32s":
            pool4 = self.scale_pool4(feats["pool4"]) if self.atonce else feats["pool4"]
            scores["pool4"] = self.score_pool4(pool4)
            if self.variant in ("8s", "4s"):
                pool3 = self.scale_pool3(feats["pool3"]) if self.atonce else feats["pool3"]
                scores["pool3"] = self.score_pool3(pool3)
            if self.variant == "4s":
                scores["pool2"] = self.score_pool2(feats["pool2"])
        return scores

    def upsample_scores(self, scores: dict[str, Tensor], height: int, width: int) -> Tensor:
        """Upsample, fuse (sum) and crop tap scores to ``height x width`` logits."""
        score = scores["out"]
        if self.variant == "32s":
            up = self.upscore(score)
        else:
            off, crop_skip = self.skip_offsets["pool4"]
            score = self._fuse(self.upscore2(score), scores["pool4"], off, crop_skip)
            if self.variant == "16s":
                up = self.upscore16(score)
            else:
                off, crop_skip = self.skip_offsets["pool3"]
                score = self._fuse(self.upscore_pool4(score), scores["pool3"], off, crop_skip)
                if self.variant == "8s":
                    up = self.upscore8(score)
                else:
                    off, crop_skip = self.skip_offsets["pool2"]
                    up = self.upscore4(self._fuse(self.upscore_pool3(score), scores["pool2"], off, crop_skip))
        return crop_like(up, self.final_offset, height, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample_scores(self.score_taps(self.backbone(x)), x.shape[2], x.shape[3])

    def caffe_layer_names(self) -> dict[str, str]:
        """Caffe layer name -> module path in this model, for weight conversion."""
        names = {k: f"backbone.{v}" for k, v in getattr(self.backbone, "caffe_names", {}).items()}
        for name in ("score_fr", "upscore", "upscore2", "score_pool4", "upscore16", "upscore_pool4",
                     "score_pool3", "upscore8", "scale_pool4", "scale_pool3", "upscore_pool3", "score_pool2",
                     "upscore4"):
            if hasattr(self, name):
                names[name] = name
        return names
