"""Data set statistics: class frequencies, median-frequency class weights, image sizes.

Class balancing (SegNet, after Eigen & Fergus): each pixel of class ``c`` is weighted
by ``median_freq / freq(c)``, where ``freq(c)`` is the number of pixels of class ``c``
divided by the total number of pixels of the images in which ``c`` is present, and
``median_freq`` the median of these frequencies. "Total pixels" counts every pixel of
those images, ignored (void) ones included, as the definition says; the median is
over the ``K`` classes (a class absent from the data set gets weight 0 and stays out
of the median).

SegNet's published CamVid weights (``../shared/data/camvid/README.md``) are not
reproducible from the 367 training labels with any variant of this definition we
tried; the closest, within 11% for ten classes, takes the median over 12 values with
void as a 12th class (``ignore_in_median=True``), and SignSymbol stays 2.7x off
(9.6446 published, 3.5331 computed). The same numbers were found by a third party
(alexgkendall/caffe-segnet issue 37), whose per-class pixel counts ours equal exactly.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import UserError

__all__ = ["DatasetStats", "compute_stats", "class_frequencies", "median_frequency_weights",
           "iter_labels"]


@dataclass
class DatasetStats:
    """Pixel counts of one pass over a data set's labels (index ``K`` = the ignore label)."""

    class_names: list[str]
    ignore_index: int
    num_images: int = 0
    #: pixels of each class, then of the ignore label; shape (K + 1,)
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: number of images containing each class (then the ignore label)
    images_with: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: all pixels of the images containing each class (then the ignore label)
    present_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: (height, width) -> number of images
    sizes: Counter = field(default_factory=Counter)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def total_pixels(self) -> int:
        return int(self.pixel_counts.sum())

    @property
    def labelled_pixels(self) -> int:
        return int(self.pixel_counts[:-1].sum())

    @property
    def ignored_pixels(self) -> int:
        return int(self.pixel_counts[-1])

    def frequencies(self) -> np.ndarray:
        """Share of the labelled (non-ignored) pixels that each class takes; sums to 1."""
        labelled = self.labelled_pixels
        if labelled == 0:
            return np.zeros(self.num_classes)
        return self.pixel_counts[:-1] / labelled

    def presence_frequencies(self, with_ignore: bool = False) -> np.ndarray:
        """SegNet's ``freq(c)``: pixels of ``c`` / all pixels of the images containing ``c``
        (NaN for a class that never occurs). ``with_ignore`` appends the ignore label's."""
        counts, present = self.pixel_counts, self.present_pixels
        if not with_ignore:
            counts, present = counts[:-1], present[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(present > 0, counts / np.maximum(present, 1), np.nan)

    def median_frequency_weights(self, ignore_in_median: bool = False) -> np.ndarray:
        """``median(freq) / freq(c)`` per class (0 for a class absent from the data set).

        ``ignore_in_median`` takes the median over the ignore label's frequency too (what
        SegNet's published CamVid weights appear to have done); the ignore label itself
        gets no weight either way.
        """
        freq = self.presence_frequencies(with_ignore=ignore_in_median)
        present = freq[~np.isnan(freq)]
        if present.size == 0:
            raise UserError("no labelled pixels in the data set: cannot compute class weights")
        median = float(np.median(present))
        k = self.num_classes
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(np.isnan(freq[:k]), 0.0, median / freq[:k])
        return weights

    def size_summary(self) -> dict[str, Any]:
        """Image count per size, and the height and width ranges."""
        if not self.sizes:
            return {"sizes": {}, "height": None, "width": None}
        hs = [h for h, _ in self.sizes]
        ws = [w for _, w in self.sizes]
        return {
            "sizes": {f"{h}x{w}": n for (h, w), n in self.sizes.most_common()},
            "height": [min(hs), max(hs)],
            "width": [min(ws), max(ws)],
        }

    def to_dict(self, class_weights: bool = False, ignore_in_median: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (what ``fcnseg stats --json`` prints)."""
        freq = self.frequencies()
        classes = []
        for c, name in enumerate(self.class_names):
            row = {"class": name, "pixels": int(self.pixel_counts[c]),
                   "frequency": float(freq[c]), "images": int(self.images_with[c])}
            classes.append(row)
        out: dict[str, Any] = {
            "num_images": self.num_images,
            "total_pixels": self.total_pixels,
            "labelled_pixels": self.labelled_pixels,
            "ignored_pixels": self.ignored_pixels,
            "classes": classes,
            "image_sizes": self.size_summary(),
        }
        if class_weights:
            weights = self.median_frequency_weights(ignore_in_median)
            presence = self.presence_frequencies()
            for row, w, f in zip(classes, weights, presence):
                row["presence_frequency"] = None if np.isnan(f) else float(f)
                row["median_frequency_weight"] = float(w)
            out["class_weights"] = [float(w) for w in weights]
            out["ignore_in_median"] = ignore_in_median
        return out


def iter_labels(dataset: Any) -> Iterable[np.ndarray]:
    """The labels of a data set as numpy arrays, untransformed where the data set allows it
    (``load_raw``); a ``skip_bad`` data set's broken samples are skipped."""
    raw = getattr(dataset, "load_raw", None)
    for i in range(len(dataset)):
        sample = raw(i) if callable(raw) else dataset[i]
        if sample is None:  # a skip_bad data set's broken sample
            continue
        label = sample["label"]
        yield label.numpy() if hasattr(label, "numpy") else np.asarray(label)


def compute_stats(dataset: Any, progress: bool = False) -> DatasetStats:
    """One pass over ``dataset``'s labels (``class_names``, ``ignore_index`` and samples
    with a ``"label"`` array, as every :func:`fcnseg.data.get_dataset` data set has).

    Samples are read untransformed (``load_raw``), so the counts are those of the files.
    """
    names = list(getattr(dataset, "class_names", []))
    if not names:
        raise UserError("the data set has no class names: cannot count classes")
    ignore = int(getattr(dataset, "ignore_index", 255))
    k = len(names)
    stats = DatasetStats(names, ignore, pixel_counts=np.zeros(k + 1, np.int64),
                         images_with=np.zeros(k + 1, np.int64), present_pixels=np.zeros(k + 1, np.int64))
    labels = iter_labels(dataset)
    if progress:
        from tqdm import tqdm

        labels = tqdm(labels, total=len(dataset), desc="reading labels", unit="img")
    for label in labels:
        if label.ndim != 2:
            raise UserError(f"label of shape {label.shape}; expected H x W")
        flat = label.reshape(-1).astype(np.int64)
        flat = np.where(flat == ignore, k, flat)
        if flat.size and (flat.min() < 0 or flat.max() > k):
            bad = flat[(flat < 0) | (flat > k)][0]
            raise UserError(f"label value {bad} out of range 0..{k - 1} (or {ignore}, ignored)")
        counts = np.bincount(flat, minlength=k + 1)
        stats.pixel_counts += counts
        present = counts > 0
        stats.images_with += present
        stats.present_pixels += present * flat.size
        stats.sizes[tuple(int(v) for v in label.shape)] += 1
        stats.num_images += 1
    return stats


def class_frequencies(dataset: Any) -> np.ndarray:
    """Share of the labelled pixels taken by each class (ignored pixels left out)."""
    return compute_stats(dataset).frequencies()


def median_frequency_weights(dataset: Any, ignore_in_median: bool = False) -> np.ndarray:
    """SegNet's median-frequency class weights of ``dataset`` (see the module docstring)."""
    return compute_stats(dataset).median_frequency_weights(ignore_in_median)
