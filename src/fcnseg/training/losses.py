"""Pixel-wise softmax cross-entropy as the reference trains it, and its modern variants.

The reference sums the loss over pixels (``normalize: false``) and compensates
with tiny learning rates (1e-10 .. 1e-14); modern recipes average over valid
pixels. Under DDP the average is over the *global* batch: each process divides
its sum by the mean number of valid pixels per process, so DDP's gradient
averaging yields exactly the single-process gradient of the same global batch.

Two options for the thin, rare classes (pole, sign, fence on CamVid), both off by default:
online hard-example mining (``ohem_keep``: only the hardest fraction of valid pixels of the
batch contributes, so the many easy road/sky pixels stop dominating the gradient), and the
Lovász-softmax term (:func:`lovasz_softmax`, Berman, Rannen Triki and Blaschko, CVPR 2018), a
convex surrogate of the per-class Jaccard loss that optimises mean IU directly.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def segmentation_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255,
                      weight: Tensor | None = None, normalize: bool = True,
                      label_smoothing: float = 0.0, pixel_mask: Tensor | None = None,
                      ohem_keep: float = 1.0) -> Tensor:
    """Cross-entropy over ``N x C x H x W`` logits and ``N x H x W`` targets.

    ``pixel_mask`` (bool ``N x H x W``) drops pixels from the loss (loss sampling).
    ``ohem_keep`` < 1 keeps only that fraction of the valid pixels of this process's batch,
    those with the largest loss (at least one); the others are treated as ignored.
    With ``normalize`` the sum is divided by the number of valid pixels (weighted by
    class weights when given, like ``nn.CrossEntropyLoss``), across all processes.
    """
    if not 0.0 < ohem_keep <= 1.0:
        raise ValueError(f"ohem_keep must be in (0, 1], got {ohem_keep}")
    if pixel_mask is not None:
        target = target.masked_fill(~pixel_mask, ignore_index)
    per_pixel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                                reduction="none", label_smoothing=label_smoothing)
    if ohem_keep < 1.0:
        target = _hardest_pixels(per_pixel.detach(), target, ohem_keep, ignore_index)
        per_pixel = per_pixel * (target != ignore_index)
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



def _hardest_pixels(per_pixel: Tensor, target: Tensor, keep: float, ignore_index: int) -> Tensor:
    """``target`` with every valid pixel outside the ``keep`` fraction of largest losses set
    to ``ignore_index`` (ties at the threshold are all kept)."""
    valid = target != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        return target
    k = max(1, math.ceil(keep * n_valid))
    threshold = per_pixel[valid].kthvalue(n_valid - k + 1).values
    return target.masked_fill(valid & (per_pixel < threshold), ignore_index)


def lovasz_softmax(logits: Tensor, target: Tensor, *, ignore_index: int = 255) -> Tensor:
    """Lovász-softmax loss over the batch (all pixels pooled), averaged over the classes
    present in ``target``.

    For each class c it sorts the pixel errors ``|[y == c] - p_c|`` in decreasing order and
    takes their dot product with the gradient of the Lovász extension of the Jaccard loss
    (Berman et al. 2018, Alg. 1). On one-hot predictions it equals the mean over present
    classes of ``1 - IoU_c``, which is what the tests check. Pooled over this process's batch
    (under DDP each process has its own term: Jaccard does not decompose over pixels).
    """
    num_classes = logits.shape[1]
    labels = target.reshape(-1)
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    # class-major (C x P) so that every class's errors are sorted at once along one axis
    probs = logits.float().softmax(1).transpose(0, 1).reshape(num_classes, -1)[:, valid]
    labels = labels[valid]
    present = labels.unique()
    fg = (labels.unsqueeze(0) == present.unsqueeze(1)).float()
    errors = (fg - probs[present]).abs()
    errors_sorted, order = errors.sort(dim=1, descending=True)
    grads = _lovasz_grad(fg.gather(1, order))
    return (errors_sorted * grads).sum(1).mean()


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at the sorted errors, one row per
    class (``gt_sorted``: the row's foreground indicator in the order of decreasing error)."""
    gts = gt_sorted.sum(1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(1)
    union = gts + (1.0 - gt_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
