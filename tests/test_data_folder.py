"""The generic folder data set: index / palette / RGB masks, YAML / JSON classes files, splits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fcnseg.data import get_dataset
from fcnseg.errors import UserError

COLORS = [[0, 0, 0], [128, 64, 128], [64, 0, 128]]
RNG = np.random.default_rng(2)


def make(root: Path, names=("a", "b"), sub: str = "", h: int = 12, w: int = 16, mask: str = "index",
         labels=None) -> list[np.ndarray]:
    (root / "images" / sub).mkdir(parents=True, exist_ok=True)
    (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
    out = []
    for k, n in enumerate(names):
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / sub / f"{n}.jpg")
        lab = labels[k] if labels is not None else RNG.integers(0, 3, (h, w)).astype(np.uint8)
        if mask == "index":
            Image.fromarray(lab).save(root / "masks" / sub / f"{n}.png")
        elif mask == "palette":
            im = Image.fromarray(lab, mode="P")
            im.putpalette(sum(COLORS, []) + [255, 255, 255] * 253)
            im.save(root / "masks" / sub / f"{n}.png")
        else:
            rgb = np.array(COLORS + [[255, 255, 255]] * 253, np.uint8)[lab]
            Image.fromarray(rgb).save(root / "masks" / sub / f"{n}.png")
        out.append(lab)
    return out


def test_index_masks_yaml_and_all_split(tmp_path):
    labs = make(tmp_path)
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump({"names": ["bg", "road", "car"]}))
    ds = get_dataset("folder", tmp_path, "all")
    assert ds.num_classes == 3 and ds.class_names == ["bg", "road", "car"] and len(ds) == 2
    assert ds.palette.shape == (3, 3)
    assert np.array_equal(ds[0]["label"], labs[0]) and ds[0]["path"].endswith("a.jpg")


def test_palette_masks_use_indices(tmp_path):
    labs = make(tmp_path, mask="palette")
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "road", "car"], "colors": COLORS}))
    ds = get_dataset("folder", tmp_path, "all")
    assert np.array_equal(ds[1]["label"], labs[1])
    assert ds.palette.tolist() == COLORS


def test_rgb_masks_colour_table_and_ignore_colour(tmp_path):
    lab = RNG.integers(0, 3, (12, 16)).astype(np.uint8)
    lab[0] = 3  # white = ignore colour
    make(tmp_path, names=("x",), mask="rgb", labels=[lab])
    cls = {"classes": [{"name": "bg", "color": COLORS[0]}, {"name": "road", "color": COLORS[1]},
                       {"name": "car", "color": COLORS[2]}], "ignore_color": [255, 255, 255]}
    (tmp_path / "classes.yml").write_text(yaml.safe_dump(cls))
    s = get_dataset("folder", tmp_path, "all")[0]
    expected = lab.copy()
    expected[0] = 255
    assert np.array_equal(s["label"], expected)
    # an unknown colour is an error naming the file and the colour
    del cls["ignore_color"]
    (tmp_path / "classes.yml").write_text(yaml.safe_dump(cls))
    with pytest.raises(UserError, match=r"x\.png: mask colour \(255, 255, 255\) is not in the colour table"):
        get_dataset("folder", tmp_path, "all")[0]


def test_custom_ignore_reduce_zero_and_out_of_range(tmp_path):
    lab = np.array([[0, 1, 2, 9]], np.uint8).repeat(4, 0)
    make(tmp_path, names=("p",), h=4, w=4, labels=[lab])
    ds = get_dataset("folder", tmp_path, "all", classes={"names": ["a", "b", "c"], "ignore_index": 9})
    assert ds[0]["label"][0].tolist() == [0, 1, 2, 255]
    ds = get_dataset("folder", tmp_path, "all", classes={"names": ["a", "b"], "reduce_zero_label": True,
                                                          "ignore_index": 9})
    assert ds[0]["label"][0].tolist() == [255, 0, 1, 255]
    ds = get_dataset("folder", tmp_path, "all", classes={"names": ["a", "b"]})
    with pytest.raises(UserError, match=r"p\.png: label value 2 out of range; expected 0\.\.1"):
        ds[0]


def test_splits_by_subfolder_and_list(tmp_path):
    make(tmp_path, names=("t1", "t2", "t3"), sub="train")
    make(tmp_path, names=("v1",), sub="val")
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\n")
    assert len(get_dataset("folder", tmp_path, "train")) == 3
    assert len(get_dataset("folder", tmp_path, "val")) == 1
    (tmp_path / "small.txt").write_text("train/t2\ntrain/t3.jpg\n")
    ds = get_dataset("folder", tmp_path, "small")
    assert [Path(f["image"]).name for f in ds.files] == ["t2.jpg", "t3.jpg"]
    assert ds[0]["label"].shape == (12, 16)
    with pytest.raises(UserError, match="no split 'test'"):
        get_dataset("folder", tmp_path, "test")


@pytest.mark.parametrize("content,match", [
    ("names: [a, a]", "appears twice"),
    ("names: []", "non-empty list"),
    ("names: [a, b]\ncolors: [[0, 0, 0]]", "1 colors for 2 names"),
    ("names: [a, b]\nignore_index: 1", "also a class index"),
    ("names: [a\n", "not valid YAML"),
    ("names: [a, b]\nmask_format: jpeg", "mask_format must be"),
])
def test_bad_classes_files(tmp_path, content, match):
    make(tmp_path, names=("a",))
    (tmp_path / "classes.yaml").write_text(content)
    with pytest.raises(UserError, match=match):
        get_dataset("folder", tmp_path, "all")


def test_missing_pieces(tmp_path):
    make(tmp_path, names=("a",))
    with pytest.raises(UserError, match="no classes file"):
        get_dataset("folder", tmp_path, "all")
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\n")
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(UserError, match=r"masks/a\.png: mask file not found"):
        get_dataset("folder", tmp_path, "all")[0]
