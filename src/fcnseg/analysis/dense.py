"""Shift-and-stitch dense prediction (paper section 3.2).

A net with output stride ``s`` samples its input every ``s`` pixels. Running it on
``f x f`` shifted copies of the input and interlacing the outputs fills in the
samples in between, making the output ``f`` times denser without changing the net.
It costs ``f**2`` forward passes; filter rarefaction (:func:`fcnseg.analysis.rarefy.rarefy`)
computes the same output in one.

Shift and crop convention (chosen so that the stitched map lines up sample for
sample with the rarefied net's output):

- with ``u = output_stride // factor`` (1 when ``factor == output_stride``), shift
  ``(dy, dx)`` for ``0 <= dy, dx < factor`` runs the net on
  ``image[..., dy*u:, dx*u:]``: the content moves up/left, i.e. the net's sampling
  grid moves down/right by ``(dy*u, dx*u)`` pixels. Nothing is padded: padding would
  put zeros where the unshifted net sees pixels.
- output sample ``(i, j)`` of shift ``(dy, dx)`` goes to
  ``dense[f*i + dy, f*j + dx]``, so dense sample ``(p, q)`` is the net evaluated
  with its grid origin at ``(p*u, q*u)``: dense coordinates are the net's output
  coordinates times ``f``, and ``dense[..., ::f, ::f]`` is the unshifted output.
- shifted inputs are smaller, so some shifts give fewer samples; the dense map is
  the largest top-left block that every shift fills, and samples beyond it are
  dropped.

Away from the borders this equals the rarefied net exactly; at the borders the two
differ only through zero padding inside the net (a shifted run pads its own border),
so for a net without padding they are identical everywhere (the tests check both).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

from torch import Tensor

from ..errors import UserError

__all__ = ["shift_and_stitch"]


def _as_tensor(out: Tensor | Mapping[str, Tensor]) -> Tensor:
    if isinstance(out, Mapping):  # a trunk returning its taps: the main output
        if "out" not in out:
            raise UserError(f"shift_and_stitch: the model returned a dict without 'out' "
                            f"(keys: {', '.join(out)})")
        out = out["out"]
    if not isinstance(out, Tensor) or out.dim() != 4:
        raise UserError("shift_and_stitch: the model must return an N x C x h x w tensor")
    return out


def shift_and_stitch(model: Callable[[Tensor], Tensor | Mapping[str, Tensor]], image: Tensor,
                     factor: int, *, output_stride: int | None = None) -> Tensor:
    """The output of ``model`` on ``image`` made ``factor`` times denser by shift-and-stitch.

    Args:
        model: maps ``N x C x H x W`` to coarse ``N x K x h x w`` outputs (a trunk plus
            score layer, without the upsampling head); a dict output uses its ``"out"``.
        image: ``N x C x H x W`` input.
        factor: how many times denser the result is in each direction (``factor**2``
            passes of the net).
        output_stride: the net's output stride ``s`` (default ``factor``, i.e. a fully
            dense result). Shifts are multiples of ``s // factor`` pixels, giving a
            result of stride ``s // factor``.

    Returns ``N x K x H' x W'`` with ``H' <= factor * h``; see the module docstring for
    the exact shift convention. Gradients flow through unless the caller disables them.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise UserError(f"shift_and_stitch: factor must be a positive integer, got {factor!r}")
    stride = factor if output_stride is None else output_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or stride % factor:
        raise UserError(f"shift_and_stitch: output_stride {stride!r} must be a positive multiple "
                        f"of factor {factor}")
    if not isinstance(image, Tensor) or image.dim() != 4:
        raise UserError("shift_and_stitch: image must be an N x C x H x W tensor")
    step = stride // factor
    height, width = image.shape[-2:]
    if (factor - 1) * step >= min(height, width):
        raise UserError(f"shift_and_stitch: a {height}x{width} image is too small for "
                        f"{factor - 1} shifts of {step} pixels")
    outs: dict[tuple[int, int], Tensor] = {}
    for dy in range(factor):
        for dx in range(factor):
            outs[dy, dx] = _as_tensor(model(image[:, :, dy * step:, dx * step:]))
    first = outs[0, 0]
    n, k = first.shape[:2]
    for key, out in outs.items():
        if out.shape[:2] != (n, k):
            raise UserError(f"shift_and_stitch: shift {key} gave {tuple(out.shape)} but the "
                            f"unshifted input gave {tuple(first.shape)}")
    dense_h = min(factor * out.shape[-2] + dy for (dy, _), out in outs.items())
    dense_w = min(factor * out.shape[-1] + dx for (_, dx), out in outs.items())
    if dense_h <= 0 or dense_w <= 0:
        raise UserError(f"shift_and_stitch: a {height}x{width} image gives an empty output "
                        f"for some shift; use a larger image")
    dense = first.new_empty(n, k, dense_h, dense_w)
    for (dy, dx), out in outs.items():
        rows = len(range(dy, dense_h, factor))
        cols = len(range(dx, dense_w, factor))
        dense[:, :, dy::factor, dx::factor] = out[:, :, :rows, :cols]
    return dense

