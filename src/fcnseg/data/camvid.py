"""CamVid, 11 classes, in the SegNet tutorial layout.

``ROOT/{train,val,test}.txt`` list ``image label`` pairs. The SegNet distribution
writes absolute paths such as ``/SegNet/CamVid/train/0001TP_006690.png``; when a
listed path does not exist under the root it is resolved by its last two path
components (``train/0001TP_006690.png``), so both forms work unchanged. Label 11
(void) becomes the ignore index 255.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..imageio import read_label_png
from .base import IGNORE_INDEX, SegmentationDataset, Transform, check_root, read_image, read_list

CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist"]
PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
], dtype=np.uint8)
VOID = 11
#: SegNet's median-frequency class weights over the 367 training images (from the data README)
MEDIAN_FREQUENCY_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                            6.2478, 7.3614]


def resolve_listed(root: Path, listed: str) -> Path:
    """A path from a list file: as given (absolute or relative to root), else by its last two parts."""
    p = Path(listed)
    candidate = p if p.is_absolute() else root / p
    if candidate.exists():
        return candidate
    tail = root.joinpath(*p.parts[-2:]) if len(p.parts) >= 2 else root / p.name
    return tail if tail.exists() else candidate


class CamVid(SegmentationDataset):
    """CamVid (SegNet split): 367 train / 101 val / 233 test images at 360 x 480."""

    name = "camvid"

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 skip_bad: bool = False) -> None:
        root = check_root(root, "CamVid")
        super().__init__(root, split, transform, skip_bad)
        self.class_names = list(CLASS_NAMES)
        self.palette = PALETTE.copy()
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            have = sorted(p.stem for p in root.glob("*.txt"))
            raise UserError(f"{list_file}: CamVid split list not found (splits here: "
                            f"{', '.join(have) or 'none'}; expected ROOT/train.txt, val.txt, test.txt)")
        for n, line in enumerate(read_list(list_file), 1):
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"{list_file}:{n}: expected 'image label', got {line!r}")
            self.files.append({"image": resolve_listed(root, parts[0]), "label": resolve_listed(root, parts[1])})

    def _read(self, i: int) -> dict:
        f = self.files[i]
        image = read_image(f["image"])
        label = read_label_png(f["label"])
        if label.dtype != np.uint8:
            label = np.clip(label, 0, 256).astype(np.int64)
        label = label.copy()
        label[label == VOID] = IGNORE_INDEX
        return {"image": image, "label": label}
