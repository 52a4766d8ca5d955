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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

__all__ = ["TTA", "parse_tta", "tta_probs"]


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


def parse_tta(spec: str | TTA | None) -> TTA:
    """Parse ``"flip"``, ``"scales=0.75,1,1.25"``, ``"flip,scales=0.5,1"`` or ``"none"`` into a :class:`TTA`.

    Numbers after ``scales=`` continue until the next word; an unknown word is an error.
    """
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
                raise UserError(f"--tta {text!r}: 'scales=' given twice")
            in_scales = True
            scales.append(_scale(tok.split("=", 1)[1], text))
        elif in_scales and _NUM.match(tok):
            scales.append(_scale(tok, text))
        elif not tok:
            raise UserError(f"--tta {text!r}: empty item (two commas in a row?)")
        else:
            raise UserError(f"--tta {text!r}: unknown item {tok!r}; expected 'flip' and/or "
                            "'scales=S1,S2,...' (e.g. flip,scales=0.75,1,1.25)")
    return TTA(flip=flip, scales=tuple(scales) if scales else (1.0,))


def _scale(tok: str, text: str) -> float:
    if not _NUM.match(tok):
        raise UserError(f"--tta {text!r}: scale {tok!r} is not a number")
    return float(tok)


def tta_probs(run: Callable[[Tensor], Tensor], x: Tensor, tta: TTA) -> Tensor:
    """Averaged class probabilities ``N x C x H x W`` of batch ``x`` (``N x 3 x H x W``, normalised).

    ``run`` maps a normalised batch to logits of the same spatial size.
    """
    height, width = x.shape[-2:]
    total: Tensor | None = None
    for s in tta.scales:
        if s == 1.0:
            xs = x
        else:
            size = (max(1, round(height * s)), max(1, round(width * s)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1.0)
        if tta.flip:
            n = xs.shape[0]
            logits = run(torch.cat([xs, xs.flip(-1)]))
            views = [logits[:n], logits[n:].flip(-1)]
        else:
            views = [run(xs)]
        term: Tensor | None = None
        for v in views:
            if v.shape[-2:] != (height, width):
                v = F.interpolate(v, size=(height, width), mode="bilinear", align_corners=False)
            p = torch.softmax(v.float(), dim=1)
            term = p if term is None else term + p
        total = term if total is None else total + term
    assert total is not None
    return total.div_(tta.num_views)
