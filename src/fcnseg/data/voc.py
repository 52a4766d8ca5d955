"""PASCAL VOC 2011/2012 segmentation and the SBD annotations, with the reference's leak-free split.

VOC: ``JPEGImages/ID.jpg`` + ``SegmentationClass/ID.png`` (palette PNGs whose indices
are the 21 classes, 255 = boundary/ignore), lists in ``ImageSets/Segmentation``.
``root`` may be the ``VOC20XX`` folder itself, ``VOCdevkit`` or its parent (then
``year`` picks the folder; default: 2012, else 2011). Split ``seg11valid`` is the
reference's 736 VOC 2011 val images that are not in SBD train.

SBD (``benchmark_RELEASE/dataset``): ``img/ID.jpg`` + ``cls/ID.mat`` (struct ``GTcls``
with field ``Segmentation``), lists ``train.txt`` (8,498) and ``val.txt``.
Train on SBD ``train``, validate on VOC ``seg11valid``: the two are disjoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..imageio import read_label_png
from ..palettes import voc_palette
from .base import SegmentationDataset, Transform, check_root, load_mat, read_image, read_list
from .voc_splits import seg11valid

CLASS_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def find_voc_dir(root: Path, year: int | str | None) -> Path:
    """The ``VOC20XX`` folder under ``root`` (which may already be it)."""
    if (root / "JPEGImages").is_dir():
        return root
    years = [str(year)] if year is not None else ["2012", "2011"]
    for y in years:
        for cand in (root / f"VOC{y}", root / "VOCdevkit" / f"VOC{y}"):
            if (cand / "JPEGImages").is_dir():
                return cand
    raise UserError(f"{root}: no PASCAL VOC folder here (expected JPEGImages/ in ROOT, ROOT/VOC{years[0]} "
                    f"or ROOT/VOCdevkit/VOC{years[0]})")


class VOC(SegmentationDataset):
    """PASCAL VOC segmentation: splits train / val / trainval of the chosen year, and seg11valid."""

    name = "voc"

    def __init__(self, root: str | Path, split: str = "seg11valid", transform: Transform | None = None,
                 skip_bad: bool = False, year: int | str | None = None) -> None:
        base = check_root(root, "PASCAL VOC")
        voc = find_voc_dir(base, year)
        super().__init__(voc, split, transform, skip_bad)
        self.class_names = list(CLASS_NAMES)
        self.palette = voc_palette(21)
        if split == "seg11valid":
            ids = seg11valid()
        else:
            list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not list_file.is_file():
                raise UserError(f"{list_file}: VOC split list not found (splits: train, val, trainval, "
                                "seg11valid)")
            ids = read_list(list_file)
        self.files = [{"image": voc / "JPEGImages" / f"{i}.jpg", "label": voc / "SegmentationClass" / f"{i}.png"}
                      for i in ids]

    def _read(self, i: int) -> dict:
        f = self.files[i]
        return {"image": read_image(f["image"]), "label": read_label_png(f["label"])}


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class map of an SBD ``cls/*.mat`` file (``GTcls.Segmentation``), as uint8."""
    gt = load_mat(path, "GTcls")
    try:
        seg = gt["Segmentation"]
        while isinstance(seg, np.ndarray) and seg.dtype == object:  # unwrap MATLAB struct/cell nesting
            seg = seg.flat[0]
        seg = np.asarray(seg)
    except (ValueError, IndexError, KeyError, TypeError):
        raise UserError(f"{path}: GTcls has no Segmentation field; expected an SBD cls/*.mat file") from None
    if seg.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation has shape {seg.shape}; expected H x W")
    if seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise UserError(f"{path}: label values {seg.min()}..{seg.max()} out of 0..255")
    return seg.astype(np.uint8)


def find_sbd_dir(root: Path) -> Path:
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "img").is_dir():
            return cand
    raise UserError(f"{root}: no SBD folder here (expected cls/ and img/ in ROOT, ROOT/dataset or "
                    "ROOT/benchmark_RELEASE/dataset)")


class SBD(SegmentationDataset):
    """Semantic Boundaries Dataset (Hariharan et al.): 21 VOC classes, ``.mat`` labels."""

    name = "sbd"

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 skip_bad: bool = False) -> None:
        sbd = find_sbd_dir(check_root(root, "SBD"))
        super().__init__(sbd, split, transform, skip_bad)
        self.class_names = list(CLASS_NAMES)
        self.palette = voc_palette(21)
        list_file = sbd / f"{split}.txt"
        if not list_file.is_file():
            raise UserError(f"{list_file}: SBD split list not found (splits: train, val)")
        ids = read_list(list_file)
        self.files = [{"image": sbd / "img" / f"{i}.jpg", "label": sbd / "cls" / f"{i}.mat"} for i in ids]

    def _read(self, i: int) -> dict:
        f = self.files[i]
        return {"image": read_image(f["image"]), "label": read_sbd_mat(f["label"])}
