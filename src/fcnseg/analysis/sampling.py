"""Loss sampling (the paper's patchwise training as a loss option, section 3.4).

Training on random patches is the same as training on whole images with part of
the loss left out. The paper drops each *final-layer cell* (one ``stride x stride``
block of output pixels for a net of output stride ``stride``) with probability
``p``, so whole receptive fields leave the loss together, as if that patch had not
been sampled. This module draws such masks and rescales the kept loss so that it
is an **unbiased** estimate of the full-image loss: its expected value, and the
expected value of its gradient, equal those of the full loss exactly.

Normalisation (``normalize``), with ``l_i`` the per-pixel cross-entropy, ``w_i`` the
class weight of pixel ``i`` (1 without ``weight``), ``V`` the non-ignored pixels of
the batch and ``m_i`` the keep mask (``P(m_i = 1) = 1 - p``):

- ``normalize=False`` (the reference's summed loss):
  ``sum_{i in V} m_i w_i l_i / (1 - p)``, whose expectation is
  ``F.cross_entropy(..., reduction="sum")``.
- ``normalize=True`` (mean loss): ``sum_{i in V} m_i w_i l_i / ((1 - p) sum_{i in V} w_i)``,
  whose expectation is ``F.cross_entropy(..., reduction="mean")`` (PyTorch's weighted
  mean). The denominator is the *full* image's weight, not the kept pixels': dividing
  by the kept count (what relabelling dropped pixels as "ignore" would do) is a ratio
  estimator, biased for small images and undefined when every cell is dropped.

Masks are aligned to the top-left corner: cell ``(a, b)`` covers rows
``a*stride .. a*stride+stride-1`` and columns likewise (the last row/column of cells
is cut by the image border). The reference FCNs' final samples are offset from
that grid by their crop; the grid only sets which pixels leave the loss together.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

__all__ = ["loss_sampling_mask", "masked_loss", "sampled_loss"]


def _check_p(p: float) -> float:
    p = float(p)
    if not (0.0 <= p < 1.0) or math.isnan(p):
        raise UserError(f"loss sampling probability p must be in [0, 1), got {p}")
    return p


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise UserError(f"loss sampling stride must be a positive integer, got {stride!r}")
    return stride


def loss_sampling_mask(target_shape: tuple[int, int, int] | torch.Size, stride: int, p: float,
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """A boolean ``N x H x W`` keep mask: each ``stride x stride`` cell is dropped
    (all False) with probability ``p``, independently per cell and per image.

    The random draw happens on ``generator``'s device (CPU without a generator), so a
    seeded CPU generator gives the same masks on every device; the mask is then moved
    to ``device``.
    """
    p = _check_p(p)
    stride = _check_stride(stride)
    if len(target_shape) != 3:
        raise UserError(f"loss sampling needs an N x H x W target shape, got {tuple(target_shape)}")
    n, h, w = (int(v) for v in target_shape)
    gh, gw = -(-h // stride), -(-w // stride)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    keep = torch.rand((n, gh, gw), generator=generator, device=draw_device) >= p
    mask = keep.repeat_interleave(stride, dim=1).repeat_interleave(stride, dim=2)[:, :h, :w]
    return mask.to(device) if device is not None else mask


def masked_loss(logits: Tensor, target: Tensor, keep: Tensor | None, p: float, *,
                ignore_index: int = 255, weight: Tensor | None = None,
                normalize: bool = True) -> Tensor:
    """The rescaled cross-entropy over the pixels where ``keep`` is True (all if None).

    ``keep`` must have been drawn with drop probability ``p`` (e.g. by
    :func:`loss_sampling_mask`); see the module docstring for the exact scaling.
    A batch without any labelled pixel gives a zero loss that still backpropagates.
    """
    p = _check_p(p)
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[2:] != target.shape[1:]:
        raise UserError(f"loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                        "must be N x K x H x W and N x H x W")
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    # w_i * l_i per pixel, 0 where ignored
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                reduction="none")
    if keep is not None:
        if keep.shape != target.shape:
            raise UserError(f"loss: keep mask {tuple(keep.shape)} does not match target "
                            f"{tuple(target.shape)}")
        per_pixel = per_pixel * keep.to(device=per_pixel.device, dtype=per_pixel.dtype)
    total = per_pixel.sum()
    denom = 1.0 - p
    if normalize:
        valid = target != ignore_index
        if weight is None:
            full_weight = valid.sum().to(per_pixel.dtype)
        else:
            full_weight = (weight[torch.where(valid, target, 0)] * valid).sum()
        # No labelled weight means every per-pixel term is 0 too: 0 / tiny = 0, no host sync.
        return total / (denom * full_weight).clamp_min(torch.finfo(per_pixel.dtype).tiny)
    return total / denom


def sampled_loss(logits: Tensor, target: Tensor, p: float, stride: int, ignore_index: int = 255,
                 weight: Tensor | None = None, normalize: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
    """Cross-entropy with loss sampling: drop each ``stride x stride`` output cell with
    probability ``p`` and rescale so that the expected loss and gradient are the full
    image's (``p = 0`` is exactly the full loss and draws nothing).

    The training engine calls this when ``loss_sampling_p > 0``, with ``stride`` the
    model's output stride (32 for FCN-32s) and ``normalize`` matching its loss
    normalisation.
    """
    p = _check_p(p)
    stride = _check_stride(stride)
    keep = None
    if p > 0:
        keep = loss_sampling_mask(tuple(target.shape), stride, p, generator=generator,
                                  device=target.device)
    return masked_loss(logits, target, keep, p, ignore_index=ignore_index, weight=weight,
                       normalize=normalize)
