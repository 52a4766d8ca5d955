"""Tiled inference: bounded memory for any image size, with the whole-image result.

The image is cut into a grid of *cores* of ``tile x tile`` pixels. Each core is run
inside a *window* that adds ``margin`` pixels of context on every side (clipped at
the image border), and only the core's scores are kept, so every output pixel comes
from exactly one window. Memory is that of one window plus the outputs.

Border policy (why the tiled result equals the whole-image result):

* A fully convolutional net's output at pixel ``p`` depends only on the input within
  its *dependency radius* ``r`` of ``p`` (half the receptive field of the coarsest
  score sample plus the reach of the upsampling layers, see :func:`dependency_radius`).
  When ``margin >= r``, every kept pixel sees exactly the input it sees in the
  whole image: where its window is clipped, the whole image ends there too, so
  both see the same padding.
* Windows start at multiples of the net's total stride (``tile`` and ``margin`` are
  rounded up to multiples of it), so every layer's sampling grid in a window is the
  whole image's grid shifted by whole samples.

* Window ends are likewise multiples of the stride counted from the image's far end,
  so flip TTA (which mirrors each window) stays aligned too and is exact as well.

With the default overlap the tiled result therefore equals the whole-image result
up to float rounding (convolution kernels may sum in another order for another
input size: differences are ~1e-6 in the logits and can flip only pixels whose two
best classes tie to that precision). A smaller ``overlap`` (a speed/exactness
trade) makes pixels within ``r`` of a core seam see zero padding where the whole
image has pixels; they may then differ. Measured with a random-weight fcn8s_lite0
(whose reach is its full receptive field) on a 300x400 image, tile 160: label
agreement 0.37 / 0.77 / 0.90 / 0.997 for overlaps 0 / 128 / 256 / 512.

Multi-scale TTA with tiling is *not* exact: each window is rescaled on its own, so
its resampling grid and stride phase differ slightly from those of the rescaled
whole image (see ``tests/test_inference.py`` for the measured agreement).

``overlap`` is the overlap of neighbouring windows (``2 * margin``); the default is
the receptive field of the model (``overlap >= receptive field`` is what makes the
result exact; the exact requirement is ``margin >= dependency_radius``, which the
default also meets). Models without geometry (ONNX files without fcnseg metadata)
use ``overlap = tile / 2`` and are not exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TileGrid", "dependency_radius", "model_stride", "plan_tiles", "predict_tiled", "bytes_per_pixel",
           "memory_budget", "auto_tile_size"]


def _fcns(net: nn.Module) -> list[nn.Module]:
    """The FCNs whose geometry is the net's: itself, or each head of a multi-task net."""
    from ..models.fcn import FCN

    if isinstance(net, FCN):
        return [net]
    heads = getattr(net, "heads", None)
    if isinstance(heads, nn.ModuleDict) and len(heads) and all(isinstance(h, FCN) for h in heads.values()):
        return list(heads.values())
    return []


def model_stride(net: nn.Module) -> int:
    """The total stride of the net's coarsest output (32 for every FCN here)."""
    from ..models.geometry import total_stride

    return max((int(total_stride(f.backbone.tap_specs("out"))) for f in _fcns(net)), default=32)


def dependency_radius(net: nn.Module) -> int | None:
    """How far (in input pixels) an output pixel of an FCN can look: ``None`` if unknown.

    ``(receptive field - 1) / 2`` of the coarsest score sample, plus, for every
    upsampling layer, half its kernel span in input pixels (the farthest coarse
    sample that contributes to a pixel); for a multi-task net the largest over its
    heads. ``tests/test_inference.py`` checks it against the measured reach (a NaN
    pixel's spread through the net).
    """
    radii = [_fcn_radius(f) for f in _fcns(net)]
    return max(radii) if radii else None


def _fcn_radius(net: nn.Module) -> int:
    reach = (net.receptive_field - 1) / 2
    stride = model_stride(net)
    names = {"32s": ["upscore"], "16s": ["upscore2", "upscore16"],
             "8s": ["upscore2", "upscore_pool4", "upscore8"],
             "4s": ["upscore2", "upscore_pool4", "upscore_pool3", "upscore4"]}[net.variant]
    for name in names:
        up = getattr(net, name)
        stride //= up.stride[0]  # input pixels per sample of this layer's output
        reach += (up.kernel_size[0] - 1) / 2 * stride
    return int(math.ceil(reach))


@dataclass(frozen=True)
class TileGrid:
    """The cut of an ``height x width`` image into cores and windows (see module docstring)."""

    height: int
    width: int
    tile: int
    margin: int
    stride: int = 32
    #: the core width when it differs from the core height ``tile`` (None: square cores)
    tile_w: int | None = None

    @property
    def cores(self) -> int | tuple[int, int]:
        """The core size as ``tile=`` takes it: a side, or ``(rows, cols)``."""
        return self.tile if self.tile_w is None else (self.tile, self.tile_w)

    @property
    def tile_cols(self) -> int:
        """The core width (``tile`` unless the grid has oblong cores)."""
        return self.tile if self.tile_w is None else self.tile_w

    @staticmethod
    def spans(length: int, tile: int, margin: int, stride: int = 32) -> list[tuple[int, int, int, int]]:
        """``(window start, window end, core start, core end)`` along one axis.

        Window starts are multiples of ``stride`` (counted from the image start) and window
        ends are too, counted from the image *end*: so a mirrored window (flip TTA) is
        aligned with the mirrored image's sampling grid as well.
        """
        out = []
        for c0 in range(0, length, tile):
            c1 = min(c0 + tile, length)
            w1 = min(length, c1 + margin)
            w1 = min(length, w1 + (length - w1) % stride)
            out.append((max(0, c0 - margin), w1, c0, c1))
        return out

    def __iter__(self) -> Iterator[tuple[slice, slice, slice, slice]]:
        """Per tile: window rows, window cols, and the core's rows/cols *within* the window."""
        for wy0, wy1, cy0, cy1 in self.spans(self.height, self.tile, self.margin, self.stride):
            for wx0, wx1, cx0, cx1 in self.spans(self.width, self.tile_cols, self.margin, self.stride):
                yield (slice(wy0, wy1), slice(wx0, wx1),
                       slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))

    @property
    def trivial(self) -> bool:
        """True when every window is the whole image (tiling would only repeat the same pass)."""
        rows = self.spans(self.height, self.tile, self.margin, self.stride)
        cols = self.spans(self.width, self.tile_cols, self.margin, self.stride)
        return all(w0 == 0 and w1 == self.height for w0, w1, _, _ in rows) \
            and all(w0 == 0 and w1 == self.width for w0, w1, _, _ in cols)

    def __len__(self) -> int:
        return len(self.spans(self.height, self.tile, self.margin, self.stride)) * len(
            self.spans(self.width, self.tile_cols, self.margin, self.stride))

    @property
    def computed_pixels(self) -> int:
        """Pixels the windows compute in all (the image's own pixels plus every margin)."""
        rows = self.spans(self.height, self.tile, self.margin, self.stride)
        cols = self.spans(self.width, self.tile_cols, self.margin, self.stride)
        return sum(w1 - w0 for w0, w1, _, _ in rows) * sum(w1 - w0 for w0, w1, _, _ in cols)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def plan_tiles(height: int, width: int, tile: int | tuple[int, int], overlap: int | None, radius: int | None,
               stride: int, receptive_field: int | None = None) -> TileGrid:
    """Choose the grid: ``tile`` (a side, or ``(rows, cols)`` of oblong cores) and ``margin``
    rounded up to multiples of ``stride``.

    ``overlap=None``: margin = max(dependency radius, receptive field / 2) (exact);
    without model geometry, ``tile / 4`` (overlap tile / 2, not exact).
    """
    tile, tile_w = (tile, None) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if tile < 1 or (tile_w is not None and tile_w < 1):
        raise ValueError(f"tile must be >= 1, got {tile if tile_w is None else (tile, tile_w)}")
    tile = _round_up(int(tile), stride)
    tile_w = None if tile_w is None or _round_up(tile_w, stride) == tile else _round_up(tile_w, stride)
    if overlap is None:
        if radius is None:
            margin = tile // 4
        else:
            margin = max(radius, math.ceil((receptive_field or 0) / 2))
    else:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        margin = math.ceil(overlap / 2)
    return TileGrid(height, width, tile, _round_up(margin, stride), stride, tile_w)


def scaled_geometry(radius: int, stride: int, receptive_field: int | None,
                    scale: float) -> tuple[int, int, int | None]:
    """Tiling geometry, in image pixels, of a net run on images resized by ``scale`` (a model card's
    ``input_scale``): window origins must map to whole, stride-aligned positions of the resized
    image (1.5 and stride 32: multiples of 64 pixels), and the context a pixel needs shrinks by
    ``scale``, plus the two bilinear resizes' reach (a pixel on each side). With these, tiles
    equal the whole image's result, as at scale 1 (``tta.resize_exact`` samples at the exact scale).
    """
    from .tta import scale_fraction

    p, q = scale_fraction(scale)
    align = stride * q // math.gcd(p, stride * q)
    rf = None if receptive_field is None else math.ceil(receptive_field / scale) + 4
    return math.ceil((radius + 2) / scale) + 2, align, rf


# --------------------------------------------------------------------------- tile size from memory
def bytes_per_pixel(net: nn.Module, num_classes: int, size: int = 128, folded_bn: bool = False) -> float:
    """Working memory of one whole-image forward per input pixel, estimated from the layers.

    The largest pair of consecutive layer outputs (a layer's input and output are alive
    together) at a ``size x size`` fp32 input, per pixel, plus the full-resolution terms:
    the image (3 B), the normalised input (12 B), the logits and their arg-max / softmax
    temporary (2 x 4 B per class) and the labels. Layers that allocate nothing are left
    out: in-place activations always, BatchNorm when ``folded_bn`` (the optimised copy
    folds it into the convolution before it). Shipped Lite0, fp32, 11 classes: 299 B/px
    for the plain net, 227 B/px folded; measured peak resident-set growth of the optimised
    path on the CPU: 148-196 B/px from 0.26 to 16 MP (docs/performance.md).
    """
    outs: list[int] = []

    def hook(m: nn.Module, _i: object, out: object) -> None:
        if getattr(m, "inplace", False) or (folded_bn and isinstance(m, nn.modules.batchnorm._BatchNorm)):
            return
        t = out if isinstance(out, Tensor) else None
        outs.append(t.numel() * 4 if t is not None else 0)  # fp32 bytes, whatever precision runs

    leaves = [m for m in net.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(hook) for m in leaves]
    try:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
        with torch.inference_mode():
            net(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    pair = max((a + b for a, b in zip(outs, outs[1:])), default=max(outs, default=0))
    return pair / (size * size) + 3 + 12 + 8 * num_classes + 4


def memory_budget(device: torch.device | str = "cpu", fraction: float = 0.5) -> int:
    """Bytes one forward may use: ``fraction`` of the memory available now.

    What :func:`fcnseg.runtime.memory.available_bytes` reads (CPU: ``MemAvailable`` of
    ``/proc/meminfo``; CUDA: the free device memory), 4 GiB where that is unknown.
    """
    from ..runtime.memory import available_bytes

    have = available_bytes(device)
    return int((have if have is not None else 4 * 2 ** 30) * fraction)


def _axis_cuts(length: int, margin: int, stride: int, min_core: int) -> list[tuple[int, int, int]]:
    """Every way to cut one axis into balanced cores: ``(core, largest window, computed length)``.

    ``n`` equal cores (rounded up to the stride) for n = 1, 2, ...; the computed length is
    ``length`` plus one margin per side of each cut, whatever the core size, so fewer cuts
    always compute less; edge windows carry only their inner margin.
    """
    out: list[tuple[int, int, int]] = []
    counts: set[int] = set()
    for n in range(1, -(-length // min_core) + 2):
        core = _round_up(-(-length // n), stride)
        if n > 1 and core < min_core:
            break
        spans = TileGrid.spans(length, core, margin, stride)
        if len(spans) in counts:
            continue
        counts.add(len(spans))
        out.append((core, max(w1 - w0 for w0, w1, _, _ in spans), sum(w1 - w0 for w0, w1, _, _ in spans)))
    return out


def auto_tile_size(height: int, width: int, bytes_per_px: float, budget: int, margin: int,
                   stride: int = 32) -> tuple[int, int] | None:
    """The tile cores ``(rows, cols)`` for an ``height x width`` image: ``None`` (whole image)
    when it fits ``budget``.

    Otherwise the grid that computes the fewest pixels (image plus margins) among those
    whose largest window fits the budget: cores need not be square (strips when one axis
    fits whole), and the cores are balanced, so that a 10000-pixel side is cut into two
    5000-pixel cores rather than 4352 + 4352 + 1296. Cores never go below
    ``max(margin, 2 * stride)``; when even those windows do not fit, that smallest grid is used.
    """
    if height * width * bytes_per_px <= budget:
        return None
    min_core = _round_up(max(margin, 2 * stride), stride)
    best: tuple[tuple[int, int], tuple[int, int]] | None = None
    for core_h, win_h, sum_h in _axis_cuts(height, margin, stride, min_core):
        for core_w, win_w, sum_w in _axis_cuts(width, margin, stride, min_core):
            if win_h * win_w * bytes_per_px > budget:
                continue
            key = (sum_h * sum_w, -core_h * core_w)  # least computed, then fewest windows
            if best is None or key < best[0]:
                best = (key, (core_h, core_w))
    return best[1] if best is not None else (min_core, min_core)


def predict_tiled(image: np.ndarray, scores: Callable[[np.ndarray], Tensor], grid: TileGrid, num_classes: int,
                  labels_out: np.ndarray, probs_out: np.ndarray | None = None,
                  to_probs: Callable[[Tensor], Tensor] | None = None,
                  progress: Callable[[int], None] | None = None) -> None:
    """Run ``scores`` (window ``h x w x 3`` uint8 -> ``C x h x w`` scores) over the grid.

    Writes the arg-max of every core into ``labels_out`` (``H x W``) and, when
    ``probs_out`` (``C x H x W``, e.g. a ``numpy.memmap``) is given, the core's
    probabilities (``to_probs`` turns scores into probabilities; identity if None).
    """
    for wy, wx, cy, cx in grid:
        s = scores(image[wy, wx])
        core = s[:, cy, cx]
        y0, x0 = wy.start + cy.start, wx.start + cx.start
        y1, x1 = y0 + (cy.stop - cy.start), x0 + (cx.stop - cx.start)
        # max(0).indices == argmax(0) (first maximum on ties), several times faster on CPU logits
        labels = core.max(0).indices.to(torch.int32 if num_classes > 256 else torch.uint8)
        labels_out[y0:y1, x0:x1] = labels.cpu().numpy()
        if probs_out is not None:
            p = to_probs(core) if to_probs is not None else core
            probs_out[:, y0:y1, x0:x1] = p.float().cpu().numpy()
        del s, core
        if progress is not None:
            progress(1)
