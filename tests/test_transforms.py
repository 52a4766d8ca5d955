"""Joint transforms: image and labels stay aligned, padding is ignore/mean, randomness is seedable."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.data import transforms as T
from fcnseg.preprocess import get_normalization, normalize

PALETTE = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220)], np.uint8)


def block_sample(h: int = 96, w: int = 128, block: int = 16, seed: int = 0) -> dict:
    """Blocks of random classes; the image colour of each pixel is its class's palette colour."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, len(PALETTE), size=(h // block, w // block))
    label = np.kron(cls, np.ones((block, block), np.int64)).astype(np.uint8)
    image = PALETTE[label]
    depth = label.astype(np.float32) * 1.5 + 1.0
    return {"image": image, "label": label, "label_geo": (label % 2).astype(np.uint8),
            "depth": depth, "hha": image[..., ::-1].copy(), "path": "synthetic"}


def interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood has one label (away from edges, where bilinear mixes)."""
    pad = np.pad(label.astype(np.int64), 2, constant_values=-1)
    same = np.ones(label.shape, bool)
    for dy in range(5):
        for dx in range(5):
            same &= pad[dy:dy + label.shape[0], dx:dx + label.shape[1]] == label
    return same


def assert_aligned(s: dict) -> None:
    lab, img = s["label"], s["image"]
    ok = interior(lab) & (lab != 255)
    assert ok.sum() > max(100, 0.15 * (lab != 255).sum())
    diff = np.abs(img[ok].astype(int) - PALETTE[lab[ok]].astype(int)).max()
    assert diff <= 2, f"image and label misaligned (max colour error {diff})"
    # the other modalities follow the same geometry
    assert np.array_equal(s["label_geo"][lab != 255], lab[lab != 255] % 2)
    np.testing.assert_allclose(s["depth"][lab != 255], lab[lab != 255] * 1.5 + 1.0)
    assert np.abs(s["hha"][ok].astype(int) - PALETTE[lab[ok]][:, ::-1].astype(int)).max() <= 2


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_flip_keep_alignment(seed):
    t = T.Compose([T.RandomScale(0.5, 2.0), T.RandomCrop((80, 100), fill="caffe"), T.RandomHorizontalFlip(0.5)])
    s = block_sample(seed=seed)
    s["rng"] = np.random.default_rng(seed)
    out = t(s)
    assert out["image"].shape == (80, 100, 3) and out["label"].shape == (80, 100)
    assert out["depth"].shape == (80, 100) and out["hha"].shape == (80, 100, 3)
    assert "rng" not in out
    assert_aligned(out)


def test_misalignment_would_be_caught():
    s = block_sample()
    s["label"] = np.ascontiguousarray(s["label"][:, ::-1])  # flip the label alone
    with pytest.raises(AssertionError):
        assert_aligned(s)


def test_flip_moves_everything():
    s = block_sample()
    ref = {k: v.copy() for k, v in s.items() if isinstance(v, np.ndarray)}
    out = T.RandomHorizontalFlip(p=1.0)(s)
    for k, v in ref.items():
        assert np.array_equal(out[k], v[:, ::-1]), k


def test_scale_labels_nearest_and_size():
    s = block_sample(h=40, w=60, block=4)
    s["rng"] = np.random.default_rng(3)
    out = T.RandomScale(1.5, 1.5)(s)
    assert out["image"].shape[:2] == (60, 90)
    assert set(np.unique(out["label"])) <= set(range(len(PALETTE)))  # nearest: no invented classes
    assert out["label"].dtype == np.uint8


def test_crop_pads_label_with_ignore_and_image_with_mean():
    s = block_sample(h=16, w=16, block=8)
    out = T.RandomCrop((24, 40), fill="caffe", seed=0)(s)
    lab, img = out["label"], out["image"]
    assert lab.shape == (24, 40)
    assert (lab == 255).sum() == 24 * 40 - 16 * 16
    assert (out["label_geo"] == 255).sum() == 24 * 40 - 16 * 16
    assert (out["depth"][lab == 255] == 0).all()
    assert (img[lab == 255] == np.array(T.pad_fill("caffe"))).all()
    for preset in ("caffe", "imagenet"):
        fill = np.array(T.pad_fill(preset), np.uint8)
        x = normalize(np.broadcast_to(fill, (2, 2, 3)).copy(), preset)
        norm = get_normalization(preset)
        err = x.abs() * torch.tensor(norm.std).view(3, 1, 1) / norm.scale  # in grey levels
        assert err.max() <= 0.5 + 1e-4, preset  # padding is zero after normalisation, up to uint8 rounding
    assert T.pad_fill("caffe") == (123, 117, 104)


def test_crop_larger_image_is_subwindow():
    s = block_sample()
    big = s["image"].copy()
    out = T.RandomCrop(32, seed=1)(s)
    h, w = big.shape[:2]
    found = any(np.array_equal(big[y:y + 32, x:x + 32], out["image"])
                for y in range(h - 31) for x in range(w - 31))
    assert found and (out["label"] != 255).all()


def test_color_jitter_changes_image_only():
    s = block_sample()
    lab = s["label"].copy()
    img = s["image"].copy()
    out = T.ColorJitter(0.4, 0.4, 0.4, seed=0)(s)
    assert np.array_equal(out["label"], lab)
    assert out["image"].dtype == np.uint8 and out["image"].shape == img.shape
    assert not np.array_equal(out["image"], img)


def test_normalize_types():
    s = block_sample(h=32, w=48)
    out = T.Normalize("caffe", hha_mean=(132.431, 94.076, 118.477))(s)
    assert out["image"].shape == (3, 32, 48) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.int64 and out["label"].shape == (32, 48)
    assert out["label_geo"].dtype == torch.int64
    assert out["depth"].shape == (1, 32, 48) and out["hha"].shape == (3, 32, 48)
    assert torch.allclose(out["image"], normalize(block_sample(h=32, w=48)["image"], "caffe"))
    assert out["path"] == "synthetic"


def test_determinism_with_seed():
    pipe = T.train_transforms("imagenet", crop_size=(48, 64), scale_range=(0.5, 2.0), flip=True, jitter=True)

    def run(seed):
        s = block_sample()
        s["rng"] = np.random.default_rng(seed)
        return pipe(s)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    # the constructor seed gives a reproducible stream too
    p1 = T.train_transforms("caffe", crop_size=32, seed=5)
    p2 = T.train_transforms("caffe", crop_size=32, seed=5)
    for _ in range(3):
        assert torch.equal(p1(block_sample())["image"], p2(block_sample())["image"])


def test_eval_transforms_keep_size():
    out = T.eval_transforms("imagenet")(block_sample(h=37, w=53, block=1))
    assert out["image"].shape == (3, 37, 53) and out["label"].shape == (37, 53)


def test_resize_deterministic():
    out = T.Resize((192, 256))(block_sample())
    assert out["image"].shape == (192, 256, 3) and out["label"].shape == (192, 256)
    assert_aligned(out)


def test_bad_arguments():
    with pytest.raises(ValueError):
        T.RandomScale(2.0, 1.0)
    with pytest.raises(ValueError):
        T.RandomCrop(0)


def test_normalize_reference_depth_and_hha_means():
    s = {"image": np.zeros((2, 2, 3), np.uint8), "label": np.zeros((2, 2), np.uint8),
         "depth": np.array([[0.0, 1.0], [2.5, 0.5]], np.float32), "hha": np.full((2, 2, 3), 132, np.uint8)}
    out = T.Normalize("caffe", hha_mean=(132.431, 94.076, 118.477), depth_log_mean=7.844)(s)
    d = out["depth"][0]
    assert d[0, 0] == 0  # missing stays 0
    assert d[0, 1].item() == pytest.approx(np.log(1000.0) - 7.844, abs=1e-5)
    assert out["hha"][0, 0, 0].item() == pytest.approx(132 - 132.431, abs=1e-4)
