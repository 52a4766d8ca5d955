"""Pixel-wise softmax cross-entropy as the reference trains it, and its modern variants.

The reference sums the loss over pixels (``normalize: false``) and compensates
with tiny learning rates (1e-10 .. 1e-14); modern recipes average over valid
pixels. Under DDP the average is over the *global* batch: each process divides
its sum by the mean number of valid pixels per process, so DDP's gradient
averaging yields exactly the single-process gradient of the same global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def segmentation_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255,
                      weight: Tensor | None = None, normalize: bool = True,
                      label_smoothing: float = 0.0, pixel_mask: Tensor | None = None) -> Tensor:
    """Cross-entropy over ``N x C x H x W`` logits and ``N x H x W`` targets.

    ``pixel_mask`` (bool ``N x H x W``) drops pixels from the loss (loss sampling).
    With ``normalize`` the sum is divided by the number of valid pixels (weighted by
    class weights when given, like ``nn.CrossEntropyLoss``), across all processes.
    """
    if pixel_mask is not None:
        target = target.masked_fill(~pixel_mask, ignore_index)
    per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                                reduction="none", label_smoothing=label_smoothing)
    total = per_pixel.sum()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not normalize:
        # DDP averages gradients over processes; a sum over the global batch needs x world.
        return total * world
    valid = target != ignore_index
    if weight is not None:
        count = weight[target.clamp(max=weight.numel() - 1)][valid].sum()
    else:
        count = valid.sum().to(per_pixel.dtype)
    count = count.detach().to(torch.float64)
    if world > 1:
        dist.all_reduce(count)
        count = count / world
    return total / count.clamp(min=1.0).to(total.dtype)

