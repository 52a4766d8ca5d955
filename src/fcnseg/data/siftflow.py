"""SIFT Flow: 33 semantic and 3 geometric classes, in the dataset's own layout (reference data layer).

``ROOT/{trainval,test}.txt`` list ids; per id ``Images/spatial_envelope_256x256_static_8outdoorcategories/ID.jpg``,
``SemanticLabels/.../ID.mat`` and ``GeoLabels/.../ID.mat`` (variable ``S``). Semantic labels
0 = void, 1..33; geometric -1 = void, 1..3. Both shift by -1 with void -> 255, so samples
carry ``label`` (0..32) and ``label_geo`` (0 sky, 1 horizontal, 2 vertical).

Evaluation note from the reference: cow, desert and moon never occur in the test split,
so their IoU is NaN (left out of the means) unless a model predicts them.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..palettes import voc_palette
from .base import SegmentationDataset, Transform, check_root, load_mat, read_image, read_list, shift_labels

SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
MEAN_BGR = (114.578, 115.294, 108.353)
CLASS_NAMES = [
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand",
    "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
]
GEO_CLASS_NAMES = ["sky", "horizontal", "vertical"]
ABSENT_FROM_TEST = ("cow", "desert", "moon")


class SIFTFlow(SegmentationDataset):
    """SIFT Flow (Liu et al.): 2,688 256x256 outdoor images, semantic + geometric labels."""

    name = "siftflow"
    label_keys = ("label", "label_geo")
    mean_bgr = MEAN_BGR

    def __init__(self, root: str | Path, split: str = "trainval", transform: Transform | None = None,
                 skip_bad: bool = False) -> None:
        root = check_root(root, "SIFT Flow")
        super().__init__(root, split, transform, skip_bad)
        self.class_names = list(CLASS_NAMES)
        self.geo_class_names = list(GEO_CLASS_NAMES)
        self.palette = voc_palette(33)
        self.geo_palette = voc_palette(3)
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise UserError(f"{list_file}: SIFT Flow split list not found (splits: trainval, test)")
        self.files = [{"image": root / "Images" / SUBDIR / f"{i}.jpg",
                       "label": root / "SemanticLabels" / SUBDIR / f"{i}.mat",
                       "label_geo": root / "GeoLabels" / SUBDIR / f"{i}.mat"} for i in read_list(list_file)]

    def num_classes_of(self, key: str) -> int:
        return len(GEO_CLASS_NAMES) if key == "label_geo" else self.num_classes

    def _read(self, i: int) -> dict:
        f = self.files[i]
        sample = {"image": read_image(f["image"])}
        for key in ("label", "label_geo"):
            raw = load_mat(f[key], "S")
            if raw.ndim != 2:
                raise UserError(f"{f[key]}: S has shape {raw.shape}; expected H x W")
            sample[key] = shift_labels(raw)
        return sample
