"""NYUDv2, 40 classes (Gupta et al.), in the layout of the reference ``nyud.tar.gz``.

``ROOT/{train,val,test}.txt`` list numeric ids; per id: ``data/images/img_ID.png`` (RGB),
``data/depth/img_ID.png`` (uint16 millimetres, 0 = missing), ``data/hha/img_ID.png``
(disparity, height, angle as 3 x uint8) and ``segmentation/img_ID.mat`` (variable
``segmentation``, 0 = unlabelled, 1..40 classes). Labels shift by -1 with 0 -> 255, as
the reference data layer does. ``trainval`` is train + val when no ``trainval.txt`` exists.

``modalities`` picks what is read besides the label: ``image`` (RGB uint8), ``depth``
(float32 metres) and ``hha`` (uint8 H x W x 3). A missing HHA folder can be filled with
:func:`fcnseg.data.hha.depth_to_hha` (``hha_from_depth=True``: slow, for small sets).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UserError
from ..palettes import voc_palette
from .base import SegmentationDataset, Transform, check_root, load_mat, read_image, read_list, shift_labels

#: the reference NYUD nets' preprocessing (nyud_layers.py): BGR mean, HHA mean (file order), log-depth mean
MEAN_BGR = (116.190, 97.203, 92.318)
MEAN_HHA = (132.431, 94.076, 118.477)
MEAN_LOGD = 7.844

CLASS_NAMES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
]
MODALITIES = ("image", "depth", "hha")


def read_depth_png(path: Path, scale: float = 0.001) -> np.ndarray:
    """A 16-bit depth PNG as float32 metres (``scale`` metres per unit; 0 stays 0 = missing)."""
    try:
        with Image.open(path) as im:
            d = np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"{path}: depth file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable depth image ({exc})") from None
    if d.ndim != 2:
        raise UserError(f"{path}: depth has shape {d.shape}; expected a single-channel 16-bit PNG")
    return d.astype(np.float32) * np.float32(scale)


class NYUDv2(SegmentationDataset):
    """NYUDv2 40-class segmentation with RGB, depth and HHA."""

    name = "nyud"
    mean_bgr = MEAN_BGR

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 skip_bad: bool = False, modalities: Sequence[str] = ("image",),
                 hha_from_depth: bool = False, depth_scale: float = 0.001) -> None:
        root = check_root(root, "NYUDv2")
        super().__init__(root, split, transform, skip_bad)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown:
            raise UserError(f"unknown NYUD modality {unknown[0]!r}; expected some of: {', '.join(MODALITIES)}")
        self.modalities = tuple(modalities)
        self.hha_from_depth = hha_from_depth
        self.depth_scale = depth_scale
        self.class_names = list(CLASS_NAMES)
        self.palette = voc_palette(40)
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            ids = read_list(list_file)
        elif split == "trainval" and (root / "train.txt").is_file():
            ids = read_list(root / "train.txt") + read_list(root / "val.txt")
        else:
            raise UserError(f"{list_file}: NYUD split list not found (splits: train, val, trainval, test)")
        if "hha" in self.modalities and not (root / "data" / "hha").is_dir() and not hha_from_depth:
            raise UserError(f"{root / 'data' / 'hha'}: no HHA folder; pass hha_from_depth=True to compute HHA "
                            "from depth")
        self.files = []
        for i in ids:
            f = {"image": root / "data" / "images" / f"img_{i}.png",
                 "label": root / "segmentation" / f"img_{i}.mat"}
            if "depth" in self.modalities or ("hha" in self.modalities and hha_from_depth):
                f["depth"] = root / "data" / "depth" / f"img_{i}.png"
            if "hha" in self.modalities and not hha_from_depth:
                f["hha"] = root / "data" / "hha" / f"img_{i}.png"
            self.files.append(f)

    def _read(self, i: int) -> dict:
        f = self.files[i]
        # the image is always read: it is the reference frame for sizes and the sample's path
        sample: dict = {"image": read_image(f["image"])}
        raw = load_mat(f["label"], "segmentation")
        if raw.ndim != 2:
            raise UserError(f"{f['label']}: segmentation has shape {raw.shape}; expected H x W")
        sample["label"] = shift_labels(raw)
        depth = read_depth_png(f["depth"], self.depth_scale) if "depth" in f else None
        if "depth" in self.modalities:
            sample["depth"] = depth
        if "hha" in self.modalities:
            if self.hha_from_depth:
                from .hha import depth_to_hha

                sample["hha"] = depth_to_hha(depth)
            else:
                sample["hha"] = read_image(f["hha"])
        return sample
