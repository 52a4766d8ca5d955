"""IU upper bound of a given output stride (paper appendix).

A net whose output has stride ``f`` cannot place a class boundary more finely than
its grid. The appendix measures what that costs by downsampling the ground truth by
``f``, upsampling it back and scoring the result against the original with the
ordinary metrics: no prediction at that stride can be expected to do better.

Convention (nearest in both directions):

- downsample: cell ``(a, b)`` covers rows ``a*f .. a*f+f-1`` and columns likewise,
  cut by the image border; it takes the label of its centre pixel, row
  ``a*f + (cell height) // 2`` (for an even ``f`` the lower/right of the two middle
  pixels; a cell cut by the border uses its own, smaller centre);
- upsample: every pixel of the cell gets that label (nearest).

A cell whose centre pixel is ignored (void) predicts nothing: its labelled pixels
count as errors (they are scored as an extra "void" prediction, which lowers the
recall of their true class but is no class of its own). The share of such pixels is
reported as ``void_predicted``. Scores are the reference ones
(:class:`fcnseg.metrics.ConfusionMatrix`, one matrix over the whole split).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..metrics import ConfusionMatrix
from .stats import iter_labels

__all__ = ["cell_centres", "downsample_labels", "upsample_labels", "reconstruct_labels",
           "upper_bound", "parse_factors"]


def cell_centres(length: int, factor: int) -> np.ndarray:
    """Index of the centre pixel of each ``factor``-long cell of ``0..length-1``."""
    starts = np.arange(0, length, factor)
    ends = np.minimum(starts + factor, length)
    return starts + (ends - starts) // 2


def downsample_labels(label: np.ndarray, factor: int) -> np.ndarray:
    """``ceil(H/f) x ceil(W/f)`` labels, each the label at its cell's centre."""
    rows = cell_centres(label.shape[0], factor)
    cols = cell_centres(label.shape[1], factor)
    return label[np.ix_(rows, cols)]


def upsample_labels(small: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling back to ``shape``: each cell's label fills the cell."""
    big = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    return big[:shape[0], :shape[1]]


def reconstruct_labels(label: np.ndarray, factor: int) -> np.ndarray:
    """The label map as seen through a stride-``factor`` grid (down, then up)."""
    if factor < 1:
        raise UserError(f"factor must be >= 1, got {factor}")
    return upsample_labels(downsample_labels(label, factor), factor, label.shape[:2])


def parse_factors(text: str) -> list[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]``; a bad list is a UserError naming it."""
    try:
        factors = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"factors {text!r}: expected comma-separated positive integers, "
                        "e.g. 8,16,32,64") from None
    if not factors or any(f < 1 for f in factors):
        raise UserError(f"factors {text!r}: expected comma-separated positive integers, "
                        "e.g. 8,16,32,64")
    return factors


def upper_bound(dataset: Any, factors: Sequence[int], progress: bool = False) -> dict[int, dict[str, Any]]:
    """Scores of the ground truth reconstructed at each stride in ``factors``.

    ``dataset`` needs ``class_names``, ``ignore_index`` and samples with a ``"label"``
    (any :func:`fcnseg.data.get_dataset` data set; labels are read untransformed).
    Returns ``{factor: {"pixel_acc", "mean_acc", "mean_iou", "fw_iou", "iou", "acc",
    "void_predicted"}}``; the means are over the data set's classes.
    """
    names = list(getattr(dataset, "class_names", []))
    if not names:
        raise UserError("the data set has no class names")
    factors = [int(f) for f in factors]
    if not factors or any(f < 1 for f in factors):
        raise UserError(f"factors must be positive integers, got {list(factors)}")
    k = len(names)
    ignore = int(getattr(dataset, "ignore_index", 255))
    mats = {f: ConfusionMatrix(k + 1, ignore_index=ignore) for f in factors}
    labels = iter_labels(dataset)
    if progress:
        from tqdm import tqdm

        labels = tqdm(labels, total=len(dataset), desc="reading labels", unit="img")
    seen = 0
    for label in labels:
        if label.ndim != 2:
            raise UserError(f"label of shape {label.shape}; expected H x W")
        target = label.astype(np.int64)
        for f in factors:
            pred = reconstruct_labels(target, f)
            pred = np.where(pred == ignore, k, pred)  # a void cell centre: the extra "void" column
            mats[f].update(pred, target)
        seen += 1
    if seen == 0:
        raise UserError("the data set has no samples")
    results: dict[int, dict[str, Any]] = {}
    for f, cm in mats.items():
        scores = cm.compute()
        iou, acc = scores["iou"][:k], scores["acc"][:k]
        mat = cm.numpy()
        total = mat.sum()
        results[f] = {
            "pixel_acc": scores["pixel_acc"],
            "mean_acc": _nanmean(acc),
            "mean_iou": _nanmean(iou),  # over the K classes; the void column is no class
            "fw_iou": scores["fw_iou"],
            "iou": iou,
            "acc": acc,
            "void_predicted": float(mat[:, k].sum() / total) if total else math.nan,
        }
    return results


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(sum(v) / len(v)) if v else math.nan
