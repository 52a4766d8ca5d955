"""PASCAL VOC, SBD and PASCAL-Context on tiny fixtures written in their true formats."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import get_dataset
from fcnseg.data.context import CLASS_NAMES as CONTEXT_NAMES
from fcnseg.data.context import CLASSES_59
from fcnseg.data.voc import CLASS_NAMES as VOC_NAMES
from fcnseg.data.voc_splits import seg11valid
from fcnseg.errors import UserError
from fcnseg.palettes import voc_palette as color_palette

scipy_io = pytest.importorskip("scipy.io")

REF = "reference/fcn-berkeleyvision/data"  # under the shared_dir fixture
RNG = np.random.default_rng(0)


def palette_png(path: Path, label: np.ndarray) -> None:
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(color_palette(256).ravel().tolist())
    im.save(path)


def jpg(path: Path, h: int = 20, w: int = 30) -> None:
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write_voc(root: Path, ids: list[str], year: str = "2012") -> dict[str, np.ndarray]:
    voc = root / "VOCdevkit" / f"VOC{year}"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    labels = {}
    for i in ids:
        jpg(voc / "JPEGImages" / f"{i}.jpg")
        lab = RNG.integers(0, 21, (20, 30)).astype(np.uint8)
        lab[0, :] = 255  # boundary
        palette_png(voc / "SegmentationClass" / f"{i}.png", lab)
        labels[i] = lab
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return labels


def test_voc_palette_png_indices_and_roots(tmp_path):
    labels = write_voc(tmp_path, ["2007_000033", "2011_003271"])
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = get_dataset("voc", root, "val")
        assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names == VOC_NAMES
        s = ds[1]
        assert np.array_equal(s["label"], labels["2011_003271"])  # palette indices, not colours
        assert s["image"].shape == (20, 30, 3)
    assert tuple(ds.palette[1]) == (128, 0, 0) and tuple(ds.palette[15]) == (192, 128, 128)  # VOC colours
    with pytest.raises(UserError, match="no PASCAL VOC folder"):
        get_dataset("voc", tmp_path, "val", year=2011)
    with pytest.raises(UserError, match="train.txt: VOC split list not found"):
        get_dataset("voc", tmp_path, "train")


def test_voc_seg11valid_matches_the_reference_list(shared_dir):
    assert seg11valid() == (shared_dir / REF / "pascal" / "seg11valid.txt").read_text().split()


def test_voc_seg11valid_is_leak_free(tmp_path):
    ids = seg11valid()
    assert len(ids) == 736 and len(set(ids)) == 736
    write_voc(tmp_path, ids[:2], year="2011")
    ds = get_dataset("voc", tmp_path, "seg11valid")
    assert len(ds) == 736
    assert ds[0]["label"].shape == (20, 30)
    with pytest.raises(UserError, match="2007_000061.jpg: no such image file"):
        ds[2]


def write_sbd(root: Path, ids: list[str]) -> dict[str, np.ndarray]:
    ds = root / "benchmark_RELEASE" / "dataset"
    (ds / "img").mkdir(parents=True)
    (ds / "cls").mkdir()
    labels = {}
    for i in ids:
        jpg(ds / "img" / f"{i}.jpg")
        lab = RNG.integers(0, 21, (20, 30)).astype(np.uint8)
        lab[5, 5] = 255
        # the SBD struct: GTcls.Segmentation / Boundaries / CategoriesPresent
        scipy_io.savemat(ds / "cls" / f"{i}.mat", {"GTcls": {
            "Segmentation": lab, "Boundaries": np.zeros((1, 1)),
            "CategoriesPresent": np.unique(lab[lab < 255]).astype(np.uint8)}})
        labels[i] = lab
    (ds / "train.txt").write_text("\n".join(ids) + "\n")
    return labels


def test_sbd_mat_labels(tmp_path):
    labels = write_sbd(tmp_path, ["2008_000002", "2008_000003"])
    ds = get_dataset("sbd", tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 21
    s = ds[0]
    assert s["label"].dtype == np.uint8 and np.array_equal(s["label"], labels["2008_000002"])
    # SBD train must not contain any seg11valid image (what makes the reference split leak-free)
    assert not set(seg11valid()) & {"2008_000002", "2008_000003"}
    scipy_io.savemat(tmp_path / "benchmark_RELEASE/dataset/cls/2008_000003.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(UserError, match=r"2008_000003\.mat: no variable 'GTcls'"):
        ds[1]
    (tmp_path / "benchmark_RELEASE/dataset/cls/2008_000003.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"2008_000003\.mat: unreadable \.mat file"):
        ds[1]


def test_context_mapping_matches_reference_lists(shared_dir):
    ref59 = shared_dir / REF / "pascal-context" / "classes-59.txt"
    ref400 = shared_dir / REF / "pascal-context" / "classes-400.txt"
    names59 = [ln.split(":", 1)[1].strip() for ln in ref59.read_text().splitlines() if ln.strip()]
    assert CONTEXT_NAMES == names59 and len(CONTEXT_NAMES) == 60
    raw = {ln.split(":", 1)[1].strip(): int(ln.split(":", 1)[0])
           for ln in ref400.read_text().splitlines() if ln.strip()}
    aliases = {"diningtable": "table", "clothes": "cloth", "bedcloth": "bedclothes"}
    for name, number in CLASSES_59:
        assert raw[aliases.get(name, name)] == number, name


def test_context_reads_labelmap(tmp_path):
    ctx = tmp_path / "PASCAL-Context"
    (ctx / "trainval").mkdir(parents=True)
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n")
    jpg(voc / "JPEGImages" / "2008_000002.jpg")
    raw = np.zeros((20, 30), np.uint16)
    raw[:5] = 2      # aeroplane -> 1
    raw[5:10] = 397  # table -> diningtable (11)
    raw[10:15] = 3   # air conditioner: not one of the 59 -> background 0
    raw[15:] = 458   # wood -> 59
    scipy_io.savemat(ctx / "trainval" / "2008_000002.mat", {"LabelMap": raw})
    ds = get_dataset("pascal-context", ctx, "val")
    assert ds.num_classes == 60 and ds.class_names[0] == "background"
    lab = ds[0]["label"]
    assert lab[0, 0] == 1 and lab[7, 0] == 11 and lab[12, 0] == 0 and lab[19, 0] == 59
    assert ds.class_names[11] == "diningtable" and ds.class_names[59] == "wood"
    with pytest.raises(UserError, match="no trainval/ folder"):
        get_dataset("pascal-context", tmp_path, "val")
