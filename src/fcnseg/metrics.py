"""Segmentation scores with the semantics of the reference ``score.py``.

One confusion matrix is accumulated over a whole split (rows = ground truth,
columns = prediction, ignored pixels dropped) and the four FCN metrics are derived
from it at the end, so that the numbers are per split, not averages of per-image
scores. A class absent from both ground truth and prediction gets NaN and is left
out of the means; a class that is predicted but absent from the ground truth gets
IoU 0 (it is counted as a mistake).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import UserError

__all__ = ["ConfusionMatrix", "scores_from_confusion"]


def _as_long_tensor(x: Tensor | np.ndarray, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, Tensor):
        t = x.detach()
    else:
        raise TypeError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{what} must hold integer class indices, got dtype {t.dtype}")
    return t.reshape(-1).to(torch.int64)


def scores_from_confusion(hist: np.ndarray) -> dict[str, Any]:
    """The four reference metrics plus per-class IoU and accuracy from a K x K count matrix."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    diag = np.diag(hist)
    gt = hist.sum(axis=1)
    pred = hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag / gt  # NaN where the class is absent from the ground truth
        union = gt + pred - diag
        iou = diag / union  # NaN only where absent from both
        pixel_acc = float(diag.sum() / total) if total > 0 else math.nan
    freq = gt / total if total > 0 else np.zeros_like(gt)
    valid = freq > 0
    fw_iou = float((freq[valid] * iou[valid]).sum()) if total > 0 else math.nan

    def nanmean(v: np.ndarray) -> float:
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan

    return {
        "pixel_acc": pixel_acc,
        "mean_acc": nanmean(acc),
        "mean_iou": nanmean(iou),
        "fw_iou": fw_iou,
        "iou": [float(v) for v in iou],
        "acc": [float(v) for v in acc],
    }


class ConfusionMatrix:
    """A K x K pixel-count matrix accumulated over many (prediction, target) pairs.

    ``update`` accepts tensors or arrays of any matching shape (a batch or a single
    image); pixels whose target equals ``ignore_index`` are dropped. A target value
    outside ``0..K-1`` that is not the ignore index is a data error (it would silently
    corrupt the scores), so it raises :class:`~fcnseg.errors.UserError`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add the pixels of ``pred`` (class indices) against ``target`` (labels)."""
        p = _as_long_tensor(pred, "pred")
        t = _as_long_tensor(target, "target")
        if p.numel() != t.numel():
            raise ValueError(f"pred has {p.numel()} pixels but target has {t.numel()} "
                             f"(shapes {tuple(pred.shape)} and {tuple(target.shape)})")
        p = p.to(self.mat.device)
        t = t.to(self.mat.device)
        k = self.num_classes
        # no boolean compaction (slow on CPU): ignored pixels go to one spare bin that is dropped
        valid = t != self.ignore_index if self.ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        bad = valid & ((t < 0) | (t >= k))
        if bool(bad.any()):
            v = int(t[bad][0])
            raise UserError(f"label value {v} is out of range: expected 0..{k - 1} "
                            f"or the ignore index {self.ignore_index}")
        if p.numel():
            pmin, pmax = int(p.min()), int(p.max())
            if pmin < 0 or pmax >= k:
                raise ValueError(f"predicted class {pmax if pmax >= k else pmin} is out of range 0..{k - 1}")
        idx = torch.where(valid, t * k + p, k * k)
        counts = torch.bincount(idx, minlength=k * k + 1)
        self.mat += counts[: k * k].view(k, k)

    def reset(self) -> None:
        """Zero the counts (start a new split)."""
        self.mat.zero_()

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts into this one (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a "
                             f"{self.num_classes}-class one")
        self.mat += other.mat.to(self.mat.device)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all processes of ``torch.distributed`` (no-op when not initialised).

        The matrix is moved to the backend's device for the collective (CUDA for
        NCCL) and brought back; returns self.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = self.mat.device
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        elif dist.get_backend() == "gloo":
            device = torch.device("cpu")  # gloo's collectives are for host tensors
        buf = self.mat.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        self.mat = buf.to(self.mat.device)
        return self

    def to(self, device: torch.device | str) -> "ConfusionMatrix":
        """Keep the counts on ``device`` (accumulate on the GPU without syncs per batch)."""
        self.mat = self.mat.to(device)
        return self

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.mat.sum())

    def numpy(self) -> np.ndarray:
        """The counts as a K x K int64 array (rows = ground truth, columns = prediction)."""
        return self.mat.cpu().numpy().copy()

    def compute(self) -> dict[str, Any]:
        """``pixel_acc``, ``mean_acc``, ``mean_iou``, ``fw_iou`` (floats) and ``iou``, ``acc`` lists."""
        return scores_from_confusion(self.numpy())

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total})"
