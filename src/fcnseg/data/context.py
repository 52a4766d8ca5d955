"""PASCAL-Context, the 59-class task (+ background = 60 outputs) of the reference FCN release.

Layout: the PASCAL-Context annotations ``trainval/ID.mat`` (variable ``LabelMap`` with the
459 raw labels numbered as in ``labels.txt`` / the reference ``classes-400.txt``) and the
VOC 2010 images ``JPEGImages/ID.jpg``. ``root`` holds ``trainval/``; the VOC 2010 folder
is found at ``voc_root`` or at ``ROOT/VOC2010``, ``ROOT/VOCdevkit/VOC2010``, ``ROOT``
or ``ROOT/../VOCdevkit/VOC2010``. Split lists: ``ROOT/{split}.txt`` if present, else
the VOC 2010 ``ImageSets/Main/{train,val}.txt`` (4,998 / 5,105 images) as the reference.

Labels: each of the 59 classes takes its raw number; every other raw label, and 0
(unlabelled), becomes 0 = background, which is a class here (the reference trains and
scores 60 outputs). Nothing is ignored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..palettes import voc_palette
from .base import SegmentationDataset, Transform, check_root, load_mat, read_image, read_list

#: the 59 classes in model output order (1..59), with their raw number in the 459-label list.
#: Three names differ between the reference 59-class list and the raw list:
#: diningtable = "table" (397), clothes = "cloth" (80), bedcloth = "bedclothes" (19).
CLASSES_59: list[tuple[str, int]] = [
    ("aeroplane", 2), ("bicycle", 23), ("bird", 25), ("boat", 31), ("bottle", 34), ("bus", 45), ("car", 59),
    ("cat", 65), ("chair", 72), ("cow", 98), ("diningtable", 397), ("dog", 113), ("horse", 207),
    ("motorbike", 258), ("person", 284), ("pottedplant", 308), ("sheep", 347), ("sofa", 368), ("train", 416),
    ("tvmonitor", 427), ("bag", 9), ("bed", 18), ("bench", 22), ("book", 33), ("building", 44),
    ("cabinet", 46), ("ceiling", 68), ("clothes", 80), ("computer", 85), ("cup", 104), ("door", 115),
    ("fence", 144), ("floor", 158), ("flower", 159), ("food", 162), ("grass", 187), ("ground", 189),
    ("keyboard", 220), ("light", 232), ("mountain", 259), ("mouse", 260), ("curtain", 105), ("platform", 296),
    ("sign", 355), ("plate", 295), ("road", 324), ("rock", 326), ("shelves", 349), ("sidewalk", 354),
    ("sky", 360), ("snow", 366), ("bedcloth", 19), ("track", 415), ("tree", 420), ("truck", 424),
    ("wall", 440), ("water", 445), ("window", 454), ("wood", 458),
]
CLASS_NAMES = ["background"] + [n for n, _ in CLASSES_59]


def raw_to_59_table() -> np.ndarray:
    """Lookup table raw label (0..459, and beyond) -> 0..59."""
    lut = np.zeros(65536, np.uint8)
    for k, (_, raw) in enumerate(CLASSES_59, 1):
        lut[raw] = k
    return lut


_LUT = raw_to_59_table()


def map_to_59(label_map: np.ndarray) -> np.ndarray:
    lab = np.asarray(label_map)
    if lab.dtype.kind == "f":
        lab = np.rint(lab)
    lab = np.clip(lab.astype(np.int64), 0, len(_LUT) - 1)
    return _LUT[lab]


def _find_voc2010(root: Path, voc_root: str | Path | None) -> Path:
    cands = [Path(voc_root)] if voc_root is not None else []
    cands += [root / "VOC2010", root / "VOCdevkit" / "VOC2010", root, root.parent / "VOCdevkit" / "VOC2010",
              root.parent / "VOC2010"]
    for c in cands:
        if (c / "JPEGImages").is_dir():
            return c
    raise UserError(f"{cands[0]}: VOC 2010 images not found (expected JPEGImages/ there; pass voc_root=)")


class PascalContext(SegmentationDataset):
    """PASCAL-Context 59 classes + background."""

    name = "pascal-context"

    def __init__(self, root: str | Path, split: str = "val", transform: Transform | None = None,
                 skip_bad: bool = False, voc_root: str | Path | None = None) -> None:
        root = check_root(root, "PASCAL-Context")
        if not (root / "trainval").is_dir():
            raise UserError(f"{root}: no trainval/ folder of PASCAL-Context .mat annotations here")
        super().__init__(root, split, transform, skip_bad)
        voc = _find_voc2010(root, voc_root)
        self.class_names = list(CLASS_NAMES)
        self.palette = voc_palette(60)
        own = root / f"{split}.txt"
        list_file = own if own.is_file() else voc / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise UserError(f"{list_file}: PASCAL-Context split list not found (splits: train, val)")
        ids = read_list(list_file)
        self.files = [{"image": voc / "JPEGImages" / f"{i}.jpg", "label": root / "trainval" / f"{i}.mat"}
                      for i in ids]

    def _read(self, i: int) -> dict:
        f = self.files[i]
        image = read_image(f["image"])
        raw = load_mat(f["label"], "LabelMap")
        if raw.ndim != 2:
            raise UserError(f"{f['label']}: LabelMap has shape {raw.shape}; expected H x W")
        return {"image": image, "label": map_to_59(raw)}
