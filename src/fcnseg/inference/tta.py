"""Test-time augmentation: horizontal flip and multi-scale, averaging class probabilities.

Each augmented view is run through the net, its logits are mapped back to the
input's frame (flipped back, resized to ``H x W`` bilinearly), turned into
probabilities with a softmax, and the probabilities of all views are averaged.
The pair of a view and its mirror is summed before it is added to the total, so
flip TTA is exactly mirror-symmetric: ``tta(flip(x)) == flip(tta(x))`` up to the
net's own float noise.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Mapping

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["TTA", "parse_tta", "tta_probs", "tta_scores", "at_input_scale"]


@dataclass(frozen=True)
class TTA:
    """Which views to average: ``flip`` adds the left-right mirror of every scale."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.scales:
            raise UserError("TTA needs at least one scale")
        for s in self.scales:
            if not (isinstance(s, (int, float)) and math.isfinite(s) and 0 < s <= 8):
                raise UserError(f"TTA scale {s!r} out of range: expected a number in (0, 8]")

    @property
    def active(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        if tuple(self.scales) != (1.0,):
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts) or "none"


_NUM = re.compile(r"^\s*[0-9]*\.?[0-9]+(e[-+]?[0-9]+)?\s*$", re.IGNORECASE)


def parse_tta(spec: str | TTA | None, *, flip: bool = False) -> TTA:
    """Parse ``"flip"``, ``"scales=0.75,1,1.25"``, ``"flip,scales=0.5,1"`` or ``"none"`` into a :class:`TTA`.

    Numbers after ``scales=`` continue until the next word; an unknown word is an error.
    ``flip=True`` adds the mirror whatever the spec says (a separate ``--flip`` switch).
    """
    if flip:
        return replace(parse_tta(spec), flip=True)
    if spec is None:
        return TTA()
    if isinstance(spec, TTA):
        return spec
    text = str(spec).strip()
    if text.lower() in ("", "none", "off", "no"):
        return TTA()
    flip = False
    scales: list[float] = []
    in_scales = False
    for raw in text.split(","):
        tok = raw.strip()
        low = tok.lower()
        if low in ("flip", "hflip"):
            flip, in_scales = True, False
        elif low.startswith("scales=") or low.startswith("scale="):
            if scales:
                raise UserError(f"tta {text!r}: 'scales=' given twice")
            in_scales = True
            scales.append(_scale(tok.split("=", 1)[1], text))
        elif in_scales and _NUM.match(tok):
            scales.append(_scale(tok, text))
        elif not tok:
            raise UserError(f"tta {text!r}: empty item (two commas in a row?)")
        else:
            raise UserError(f"tta {text!r}: unknown item {tok!r}; expected 'flip' and/or "
                            "'scales=S1,S2,...' (e.g. flip,scales=0.75,1,1.25)")
    return TTA(flip=flip, scales=tuple(scales) if scales else (1.0,))


def at_input_scale(tta: TTA, input_scale: float) -> TTA:
    """The views actually run for a net whose model card says it sees images at ``input_scale``:
    every test-time scale multiplied by it (no TTA at input scale 1.5 is one view at 1.5)."""
    if input_scale == 1.0:
        return tta
    return replace(tta, scales=tuple(s * input_scale for s in tta.scales))


def _scale(tok: str, text: str) -> float:
    if not _NUM.match(tok):
        raise UserError(f"tta {text!r}: scale {tok!r} is not a number")
    return float(tok)


Batch = Tensor | Mapping[str, Tensor]


def _each(x: Batch, fn: Callable[[Tensor], Tensor]) -> Batch:
    """``fn`` on a tensor, or on every tensor of a dict (multi-input nets, multi-head outputs)."""
    return {k: fn(v) for k, v in x.items()} if isinstance(x, Mapping) else fn(x)


def _add(a: Batch | None, b: Batch) -> Batch:
    if a is None:
        return b
    return {k: a[k] + b[k] for k in b} if isinstance(b, Mapping) else a + b


def resize_exact(t: Tensor, size: tuple[int, int], scale: float, antialias: bool = False) -> Tensor:
    """Bilinear resize of ``N x C x H x W`` to ``size`` that samples at exactly ``scale``: output
    pixel ``i`` reads input position ``(i + 0.5) / scale - 0.5`` (``align_corners=False``, as
    ``F.interpolate``), not the ratio of the rounded sizes.

    The weights are computed from the exact fraction (``scale`` as ``p / q``), so output pixels of
    the same phase get bit-identical weights wherever they lie: a window whose origin maps to a
    whole pixel of the resized image gives bit-for-bit the resized image's pixels, and tiles of a
    net run at an input scale equal the whole image's result. ``antialias`` (shrinking input
    images for multi-scale TTA) uses torch's antialiased kernel instead, exact in sampling but not
    bit-identical across windows.
    """
    if antialias and scale < 1.0:
        return torch.ops.aten._upsample_bilinear2d_aa(t, list(size), False, scale, scale)
    for dim, n in ((-2, size[0]), (-1, size[1])):
        t = _resize_axis(t, dim, n, scale)
    return t


def scale_fraction(scale: float) -> tuple[int, int]:
    """``scale`` as the exact fraction ``p / q`` that resizing and tile alignment both use (they must
    agree: tiles are aligned where the resize's phases repeat)."""
    f = Fraction(scale).limit_denominator(1000)
    return f.numerator, f.denominator


_MAX_STRIDED_PHASES = 16
"""Scales ``p / q`` with more output phases than this resize by gathering (one lerp per phase)."""


def _resize_axis(t: Tensor, dim: int, n_out: int, scale: float) -> Tensor:
    """Resize one axis. Output pixel ``i`` and ``i + p`` (scale ``p / q``) read inputs ``q`` apart
    with the same weight, so the interior is ``p`` strided lerps over views of ``t`` (no gather:
    ``index_select`` along the last axis was a fifth of a CPU prediction at input scale 1.5); the
    few clamped pixels at either end, and scales of large ``p``, take the gather path. Both give
    bit-identical values: the same weight, in ``t``'s dtype, in the same formula."""
    p, q = scale_fraction(scale)
    n_in = t.shape[dim]
    num = (2 * torch.arange(n_out, dtype=torch.int64) + 1) * q - p  # source position x 2p
    clamped = num < 0
    num = num.clamp(min=0)
    i0 = num // (2 * p)
    w1 = (num % (2 * p)).double() / (2 * p)
    past = i0 >= n_in - 1
    i0 = i0.clamp(max=n_in - 1)
    i1 = torch.where(past, i0, i0 + 1)
    w1 = torch.where(past, torch.zeros_like(w1), w1).to(t.dtype)
    dim = dim % t.ndim
    lo = int(clamped.sum())  # clamped at the start: a prefix; past the end: a suffix
    hi = n_out - int(past.sum())
    if p > _MAX_STRIDED_PHASES or hi - lo < 4 * p:
        return _lerp_gather(t, dim, i0, i1, w1)
    shape = list(t.shape)
    shape[dim] = n_out
    out = t.new_empty(shape)

    def at(index: slice) -> tuple[slice, ...]:
        return (slice(None),) * dim + (index,)

    for j in range(lo, lo + p):  # one phase: outputs j, j + p, ... < hi
        count = len(range(j, hi, p))
        start = int(i0[j])
        a = t[at(slice(start, start + (count - 1) * q + 1, q))]
        b = t[at(slice(start + 1, start + (count - 1) * q + 2, q))]
        torch.add(a, (b - a).mul_(w1[j]), out=out[at(slice(j, hi, p))])
    for edge in (slice(0, lo), slice(hi, n_out)):
        if edge.stop > edge.start:
            out[at(edge)] = _lerp_gather(t, dim, i0[edge], i1[edge], w1[edge])
    return out


def _lerp_gather(t: Tensor, dim: int, i0: Tensor, i1: Tensor, w1: Tensor) -> Tensor:
    shape = [1] * t.ndim
    shape[dim] = len(w1)
    w1 = w1.to(t.device).view(shape)
    a = t.index_select(dim, i0.to(t.device))
    b = t.index_select(dim, i1.to(t.device))
    return a + (b - a) * w1


def _frame(x: Batch) -> tuple[int, int, int]:
    """``(N, H, W)`` of a batch (of its first input, for a multi-input net)."""
    first = next(iter(x.values())) if isinstance(x, Mapping) else x
    return first.shape[0], first.shape[-2], first.shape[-1]


def _view_input(x: Batch, s: float, height: int, width: int) -> Batch:
    """The batch as the net sees it at scale ``s`` (shrunk with antialiasing)."""
    if s == 1.0:
        return x
    size = (max(1, round(height * s)), max(1, round(width * s)))
    return _each(x, lambda t: resize_exact(t, size, s, antialias=True))


def _to_frame(v: Tensor, s: float, height: int, width: int) -> Tensor:
    """A view's scores mapped back to the input's ``H x W``."""
    return v if v.shape[-2:] == (height, width) else resize_exact(v, (height, width), 1.0 / s)


def tta_scores(run: Callable[[Batch], Batch], x: Batch, tta: TTA) -> tuple[Batch, bool]:
    """Scores of batch ``x`` under views ``tta``: ``(scores, is_probability)``.

    Several views: their averaged probabilities (:func:`tta_probs`). One view (a net run at its
    card's input scale, say): its logits mapped back to ``H x W``, without a softmax, which
    labels do not need (the argmax is the same) and which cost a prediction at 1.5x 3 %.
    """
    if tta.num_views > 1:
        return tta_probs(run, x, tta), True
    s = tta.scales[0]
    _, height, width = _frame(x)
    return _each(run(_view_input(x, s, height, width)), lambda v: _to_frame(v, s, height, width)), False


def tta_probs(run: Callable[[Batch], Batch], x: Batch, tta: TTA) -> Batch:
    """Averaged class probabilities ``N x C x H x W`` of batch ``x`` (``N x 3 x H x W``, normalised).

    ``run`` maps a normalised batch to logits of the same spatial size. A multi-input
    net's dict of inputs is resized and mirrored input by input, and a multi-head net's
    dict of logits gives a dict of averaged probabilities, head by head.
    """
    n, height, width = _frame(x)

    total: Batch | None = None
    for s in tta.scales:
        def to_probs(v: Tensor, s: float = s) -> Tensor:
            return torch.softmax(_to_frame(v, s, height, width).float(), dim=1)

        xs = _view_input(x, s, height, width)
        if tta.flip:
            logits = run(_each(xs, lambda t: torch.cat([t, t.flip(-1)])))
            views = [_each(logits, lambda t: t[:n]), _each(logits, lambda t: t[n:].flip(-1))]
        else:
            views = [run(xs)]
        term: Batch | None = None
        for v in views:
            term = _add(term, _each(v, to_probs))
        total = _add(total, term)
    assert total is not None
    return _each(total, lambda t: t.div_(tta.num_views))
