"""CamVid in the SegNet layout: synthetic fixtures (incl. SegNet's absolute list paths) and real files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED  # noqa: E402
from fcnseg.data import collate, get_dataset, list_datasets
from fcnseg.data.camvid import CLASS_NAMES, PALETTE
from fcnseg.data.transforms import eval_transforms, train_transforms
from fcnseg.errors import UserError

CAMVID = SHARED / "data" / "camvid"


def write_camvid(root: Path, n: int = 3, segnet_paths: bool = False, ext: str = "png",
                 size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """A tiny CamVid in the SegNet layout; returns the raw labels written."""
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    rng = np.random.default_rng(0)
    lines, labels = [], []
    for i in range(n):
        img = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        lab = rng.integers(0, 12, size=size, dtype=np.uint8)  # 11 = void
        Image.fromarray(img).save(root / "train" / f"f{i}.{ext}")
        Image.fromarray(lab, mode="L").save(root / "trainannot" / f"f{i}.png")
        labels.append(lab)
        prefix = "/SegNet/CamVid/" if segnet_paths else ""
        lines.append(f"{prefix}train/f{i}.{ext} {prefix}trainannot/f{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return labels


def test_images_are_read_on_their_stored_grid(tmp_path):
    """Data-set images use fcnseg.imageio's reader but not its EXIF rotation: labels are
    drawn on the stored pixel grid, so a rotated image would no longer fit its label."""
    from fcnseg.imageio import read_image

    raw = write_camvid(tmp_path, n=1, ext="jpg")
    img = tmp_path / "train" / "f0.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored = np.asarray(Image.open(img).convert("RGB"))
    Image.fromarray(stored).save(img, exif=exif.tobytes(), quality=95)
    assert read_image(img).shape == (32, 24, 3)  # a viewer's (predict's) orientation
    s = get_dataset("camvid", tmp_path, "train")[0]
    assert s["image"].shape == (24, 32, 3) and s["label"].shape == raw[0].shape


def test_names_and_metadata(tmp_path):
    assert {"camvid", "voc", "sbd", "pascal-context", "nyud", "siftflow", "folder"} <= set(list_datasets())
    write_camvid(tmp_path)
    ds = get_dataset("camvid", tmp_path, "train")
    assert ds.num_classes == 11 and ds.class_names == CLASS_NAMES
    assert ds.palette.shape == (11, 3) and ds.palette.dtype == np.uint8
    assert tuple(ds.palette[0]) == (128, 128, 128) and tuple(ds.palette[10]) == (0, 128, 192)
    assert ds.ignore_index == 255 and len(ds) == 3 and len(ds.files) == 3


@pytest.mark.parametrize("segnet_paths,ext", [(False, "png"), (True, "png"), (True, "jpg")])
def test_reads_layout_and_maps_void(tmp_path, segnet_paths, ext):
    raw = write_camvid(tmp_path, segnet_paths=segnet_paths, ext=ext)
    ds = get_dataset("camvid", tmp_path, "train")
    s = ds[1]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (24, 32, 3)
    assert s["path"].endswith(f"f1.{ext}")
    expected = raw[1].copy()
    expected[expected == 11] = 255
    assert np.array_equal(s["label"], expected)
    assert (s["label"] != 11).all()


def test_with_transform_and_collate(tmp_path):
    write_camvid(tmp_path, n=4)
    ds = get_dataset("camvid", tmp_path, "train", transform=train_transforms("caffe", crop_size=(16, 16)))
    ds.set_epoch(0, seed=3)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].dtype == torch.int64
    again = collate([ds[i] for i in range(4)])
    assert torch.equal(batch["image"], again["image"])  # (seed, epoch, index) fixes augmentation
    ds.set_epoch(1)
    assert not torch.equal(batch["image"], collate([ds[i] for i in range(4)])["image"])
    assert torch.equal(ds[(2, 99)]["label"], ds[(2, 99)]["label"])


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(UserError, match="root folder not found"):
        get_dataset("camvid", tmp_path / "nope", "train")
    write_camvid(tmp_path, n=4)
    with pytest.raises(UserError, match=r"val\.txt.*not found"):
        get_dataset("camvid", tmp_path, "val")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        get_dataset("camvid", tmp_path, "empty")
    # 0: missing image, 1: corrupt image, 2: size mismatch, 3: label value out of range
    (tmp_path / "train" / "f0.png").unlink()
    (tmp_path / "train" / "f1.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "trainannot" / "f2.png")
    Image.fromarray(np.full((24, 32), 40, np.uint8)).save(tmp_path / "trainannot" / "f3.png")
    ds = get_dataset("camvid", tmp_path, "train")
    with pytest.raises(UserError, match=r"f0\.png: no such image file"):
        ds[0]
    with pytest.raises(UserError, match=r"f1\.png: not an image file"):
        ds[1]
    with pytest.raises(UserError, match=r"f2\.png: label is 10x10 but the image .*f2\.png is 32x24"):
        ds[2]
    with pytest.raises(UserError, match=r"trainannot/f3\.png: label value 40 out of range; expected 0\.\.10"):
        ds[3]
    ds = get_dataset("camvid", tmp_path, "train", skip_bad=True)
    assert [ds[i] for i in range(4)] == [None] * 4
    assert len(ds.bad) == 4
    assert collate([None, None]) is None


def test_malformed_list_line(tmp_path):
    write_camvid(tmp_path)
    (tmp_path / "bad.txt").write_text("train/f0.png\n")
    with pytest.raises(UserError, match=r"bad\.txt:1: expected 'image label'"):
        get_dataset("camvid", tmp_path, "bad")


def test_real_camvid_files(shared_dir):
    ds = get_dataset("camvid", CAMVID, "val")
    assert len(ds) == 101
    tr = get_dataset("camvid", CAMVID, "train")
    assert len(tr) == 367
    seen = set()
    for i in (0, 50, 100):
        s = ds[i]
        assert s["image"].shape == (360, 480, 3) and s["image"].dtype == np.uint8
        assert s["label"].shape == (360, 480)
        seen |= set(np.unique(s["label"]).tolist())
    assert seen <= set(range(11)) | {255} and 255 in seen and len(seen) > 5
    ds.transform = eval_transforms("imagenet")
    s = ds[0]
    assert s["image"].shape == (3, 360, 480) and s["label"].dtype == torch.int64
    assert tuple(PALETTE[3]) == (128, 64, 128)  # Road


def test_unknown_dataset_and_option(tmp_path):
    write_camvid(tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'kitti'"):
        get_dataset("kitti", tmp_path, "train")
    with pytest.raises(UserError, match="unknown option 'year' for dataset 'camvid'; expected one of: skip_bad"):
        get_dataset("camvid", tmp_path, "train", year=2012)
    assert len(get_dataset("CamVid", tmp_path, "train")) == 3
