"""NYUDv2 (reference layout, RGB + depth + HHA) and SIFT Flow (semantic + geometric) fixtures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import get_dataset
from fcnseg.data.nyud import CLASS_NAMES as NYUD_NAMES
from fcnseg.data.siftflow import CLASS_NAMES as SIFT_NAMES
from fcnseg.data.siftflow import GEO_CLASS_NAMES, SUBDIR
from fcnseg.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from fcnseg.errors import UserError

scipy_io = pytest.importorskip("scipy.io")
REF = "reference/fcn-berkeleyvision/data"  # under the shared_dir fixture
RNG = np.random.default_rng(1)


def write_nyud(root: Path, ids=("5449", "6140"), h=24, w=32) -> dict:
    for d in ("data/images", "data/depth", "data/hha", "segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    raws = {}
    for i in ids:
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"data/images/img_{i}.png")
        depth_mm = RNG.integers(500, 5000, (h, w)).astype(np.uint16)
        depth_mm[0, 0] = 0  # missing
        Image.fromarray(depth_mm).save(root / f"data/depth/img_{i}.png")
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"data/hha/img_{i}.png")
        raw = RNG.integers(0, 41, (h, w)).astype(np.uint16)  # 0 = unlabelled, 1..40
        scipy_io.savemat(root / f"segmentation/img_{i}.mat", {"segmentation": raw})
        raws[i] = (raw, depth_mm)
    (root / "train.txt").write_text(ids[0] + "\n")
    (root / "val.txt").write_text("\n".join(ids[1:]) + "\n")
    return raws


def test_nyud_class_list_matches_reference(shared_dir):
    ref = shared_dir / REF / "nyud" / "classes.txt"
    assert NYUD_NAMES == ref.read_text().splitlines()[:40]
    assert len(NYUD_NAMES) == 40


def test_nyud_modalities_and_label_shift(tmp_path):
    raws = write_nyud(tmp_path)
    ds = get_dataset("nyud", tmp_path, "trainval", modalities=("image", "depth", "hha"))
    assert len(ds) == 2 and ds.num_classes == 40
    s = ds[0]
    raw, depth_mm = raws["5449"]
    expected = raw.astype(np.int64) - 1
    expected[raw == 0] = 255
    assert np.array_equal(s["label"], expected)
    assert s["label"].max() <= 255 and ((s["label"] < 40) | (s["label"] == 255)).all()
    np.testing.assert_allclose(s["depth"], depth_mm / 1000.0, rtol=1e-6)
    assert s["depth"][0, 0] == 0
    assert s["hha"].shape == (24, 32, 3) and s["hha"].dtype == np.uint8
    # all modalities move together through the joint transforms
    t = Compose([RandomCrop((30, 40), seed=0), RandomHorizontalFlip(1.0), Normalize("caffe")])
    out = t(ds.load_raw(0))
    assert out["image"].shape == (3, 30, 40) and out["hha"].shape == (3, 30, 40)
    assert out["depth"].shape == (1, 30, 40) and out["label"].dtype == torch.int64
    # the crop equals the padded size, so the result is exactly pad-then-flip of every modality
    exp_depth = np.pad(depth_mm / 1000.0, ((0, 6), (0, 8)))[:, ::-1]
    np.testing.assert_allclose(out["depth"][0].numpy(), exp_depth, rtol=1e-6)
    exp_label = np.pad(expected, ((0, 6), (0, 8)), constant_values=255)[:, ::-1]
    assert np.array_equal(out["label"].numpy(), exp_label)
    exp_hha = np.pad(s["hha"], ((0, 6), (0, 8), (0, 0)))[:, ::-1].transpose(2, 0, 1)
    assert np.array_equal(out["hha"].numpy(), exp_hha.astype(np.float32))
    # only the image by default
    assert set(get_dataset("nyud", tmp_path, "train")[0]) == {"image", "label", "path"}


def test_nyud_errors(tmp_path):
    write_nyud(tmp_path)
    with pytest.raises(UserError, match="test.txt: NYUD split list not found"):
        get_dataset("nyud", tmp_path, "test")
    with pytest.raises(UserError, match="unknown NYUD modality 'rgbd'"):
        get_dataset("nyud", tmp_path, "train", modalities=("rgbd",))
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(tmp_path / "data/depth/img_5449.png")
    ds = get_dataset("nyud", tmp_path, "train", modalities=("image", "depth"))
    with pytest.raises(UserError, match=r"img_5449\.png: depth is 10x10 but the image .* is 32x24"):
        ds[0]


def test_nyud_hha_from_depth(tmp_path):
    write_nyud(tmp_path, ids=("1",))
    import shutil

    shutil.rmtree(tmp_path / "data" / "hha")
    with pytest.raises(UserError, match="no HHA folder"):
        get_dataset("nyud", tmp_path, "train", modalities=("hha",))
    ds = get_dataset("nyud", tmp_path, "train", modalities=("hha",), hha_from_depth=True)
    s = ds[0]
    assert s["hha"].shape == (24, 32, 3) and s["hha"].dtype == np.uint8
    assert (s["hha"][0, 0] == 0).all()  # missing depth


def write_siftflow(root: Path, ids=("coast_arnat59", "street_bost64")) -> dict:
    for d in ("Images", "SemanticLabels", "GeoLabels"):
        (root / d / SUBDIR).mkdir(parents=True)
    raws = {}
    for i in ids:
        Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "Images" / SUBDIR / f"{i}.jpg")
        sem = RNG.integers(0, 34, (16, 16)).astype(np.int32)  # 0 void, 1..33 (MATLAB doubles/ints)
        geo = RNG.integers(-1, 4, (16, 16)).astype(np.int32)  # -1 void, 1..3 (0 also unlabelled)
        scipy_io.savemat(root / "SemanticLabels" / SUBDIR / f"{i}.mat", {"S": sem.astype(np.float64)})
        scipy_io.savemat(root / "GeoLabels" / SUBDIR / f"{i}.mat", {"S": geo})
        raws[i] = (sem, geo)
    (root / "trainval.txt").write_text("\n".join(ids) + "\n")
    return raws


def test_siftflow_semantic_and_geometric(tmp_path):
    raws = write_siftflow(tmp_path)
    ds = get_dataset("siftflow", tmp_path, "trainval")
    assert ds.num_classes == 33 and ds.class_names == SIFT_NAMES
    assert ds.geo_class_names == GEO_CLASS_NAMES == ["sky", "horizontal", "vertical"]
    s = ds[1]
    sem, geo = raws["street_bost64"]
    exp_sem = np.where(sem == 0, 255, sem - 1)
    exp_geo = np.where(geo <= 0, 255, geo - 1)
    assert np.array_equal(s["label"], exp_sem) and np.array_equal(s["label_geo"], exp_geo)
    assert set(np.unique(s["label_geo"])) <= {0, 1, 2, 255}


def test_siftflow_class_lists_match_reference(shared_dir):
    ref = shared_dir / REF / "sift-flow" / "classes.txt"
    lines = [ln.split(None, 1) for ln in ref.read_text().splitlines() if ln[:2].isdigit()]
    assert [n for _, n in lines[:33]] == SIFT_NAMES and [n for _, n in lines[33:36]] == GEO_CLASS_NAMES


def test_siftflow_geo_out_of_range(tmp_path):
    write_siftflow(tmp_path, ids=("a",))
    scipy_io.savemat(tmp_path / "GeoLabels" / SUBDIR / "a.mat", {"S": np.full((16, 16), 5, np.int32)})
    with pytest.raises(UserError, match=r"GeoLabels/.*a\.mat: label value 4 out of range; expected 0\.\.2"):
        get_dataset("siftflow", tmp_path, "trainval")[0]


def test_reference_means(tmp_path):
    from fcnseg.data.nyud import MEAN_BGR
    from fcnseg.preprocess import normalize

    write_nyud(tmp_path, ids=("1",))
    ds = get_dataset("nyud", tmp_path, "train")
    norm = ds.reference_normalization("caffe")
    assert norm.mean == MEAN_BGR and norm.bgr
    assert ds.reference_normalization("imagenet").name == "imagenet"
    px = np.array([[[92, 97, 116]]], np.uint8)  # RGB of the (rounded) BGR mean
    assert normalize(px, norm).abs().max() < 0.5
