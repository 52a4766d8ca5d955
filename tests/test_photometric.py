"""Photometric (appearance-shift) augmentation: what each knob does, determinism, config option."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.data import transforms as T
from fcnseg.errors import UserError
from fcnseg.training.config import load_config

OFF = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "gamma": 1.0, "sigma": 0.0}


def sample(seed: int = 0, h: int = 24, w: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 226, (h, w, 3), dtype=np.uint8)
    return {"image": img, "label": rng.integers(0, 11, (h, w), dtype=np.uint8),
            "depth": rng.random((h, w)).astype(np.float32), "path": "synthetic"}


def test_identity_factors_keep_the_image():
    img = sample()["image"]
    assert np.array_equal(T.Photometric.apply(img, OFF), img)
    # with all knobs at 0 the drawn factors are the identity too
    out = T.Photometric(seed=3)(sample())
    assert np.array_equal(out["image"], img)


def test_each_knob_does_what_it_says():
    img = sample()["image"]
    f = dict(OFF)
    bright = T.Photometric.apply(img, {**f, "brightness": 1.2}).astype(float)
    assert bright.mean() > img.mean() + 10
    low = T.Photometric.apply(img, {**f, "contrast": 0.5}).astype(float)
    assert low.std() < 0.6 * img.astype(float).std()
    grey = T.Photometric.apply(img, {**f, "saturation": 0.0}).astype(float)
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).max() <= 1.0  # r = g = b
    # hue: a half turn keeps luma (about) and moves the colours
    luma = np.array([0.299, 0.587, 0.114])
    hued = T.Photometric.apply(img, {**f, "hue": 0.5}).astype(float)
    inside = (hued > 0).all(axis=2) & (hued < 255).all(axis=2)  # unclipped pixels
    assert np.abs((hued @ luma) - (img.astype(float) @ luma))[inside].mean() < 1.0
    assert np.abs(hued - img).mean() > 10
    full = T.Photometric.apply(img, {**f, "hue": 1.0})  # a full turn is the identity
    assert np.abs(full.astype(int) - img).max() <= 1
    darker = T.Photometric.apply(img, {**f, "gamma": 1.5}).astype(float)
    assert (darker <= img + 1).all() and darker.mean() < img.mean() - 10
    blurred = T.Photometric.apply(img, {**f, "sigma": 1.5}).astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.5 * np.abs(np.diff(img.astype(float), axis=1)).mean()
    assert abs(blurred.mean() - img.mean()) < 2


def test_image_only_and_deterministic_per_sample_seed():
    t = T.Photometric(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, gamma=0.5, blur_p=0.5)
    outs = []
    for seed in (7, 7, 8):
        s = sample()
        lab, depth = s["label"].copy(), s["depth"].copy()
        s["rng"] = np.random.default_rng(seed)
        out = t(s)
        assert np.array_equal(out["label"], lab) and np.array_equal(out["depth"], depth)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (24, 32, 3)
        outs.append(out["image"])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    # the draws are the same whichever knobs are on: hue alone gets the same hue as above
    d_all = t.draw(np.random.default_rng(5))
    d_hue = T.Photometric(hue=0.1).draw(np.random.default_rng(5))
    assert d_all["hue"] == pytest.approx(d_hue["hue"]) and d_hue["brightness"] == 1.0
    # over many seeds every factor covers its range, blur about half the time
    draws = [t.draw(np.random.default_rng(i)) for i in range(400)]
    assert min(d["brightness"] for d in draws) < 0.65 and max(d["brightness"] for d in draws) > 1.35
    assert min(d["gamma"] for d in draws) < 1 / 1.4 and max(d["gamma"] for d in draws) > 1.4
    assert 0.4 < np.mean([d["sigma"] > 0 for d in draws]) < 0.6


def test_in_the_training_pipeline_through_the_data_set(tmp_path):
    from fcnseg.data import get_dataset
    from test_data_camvid import write_camvid

    write_camvid(tmp_path, n=2)
    pipe = T.train_transforms("imagenet", crop_size=(16, 16), scale_range=None, flip=False,
                              photometric={"hue": 0.2, "gamma": 0.4, "blur_p": 1.0})
    assert "Photometric(" in repr(pipe)
    ds = get_dataset("camvid", tmp_path, "train", transform=pipe)
    ds.set_epoch(0, seed=1)
    a = ds[0]["image"]
    assert torch.equal(a, ds[0]["image"])  # (seed, epoch, index) fixes it
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0]["image"])


def test_config_option_and_its_errors(tmp_path):
    cfg = load_config(None, {"photometric": "{hue: 0.05, gamma: 0.3, blur_p: 0.2}"})
    assert cfg.photometric == {"hue": 0.05, "gamma": 0.3, "blur_p": 0.2}
    assert load_config(None, {}).photometric is None
    with pytest.raises(UserError, match="photometric options are brightness, .*got hue, sharpness"):
        load_config(None, {"photometric": "{hue: 0.1, sharpness: 2}"})
    with pytest.raises(UserError, match=r"photometric hue must be in \[0, 0.5\], got 0.9"):
        load_config(None, {"photometric": "{hue: 0.9}"})
    with pytest.raises(UserError, match="photometric must be a mapping"):
        load_config(None, {"photometric": "0.3"})
    with pytest.raises(ValueError, match="blur_sigma"):
        T.Photometric(blur_sigma=(2.0, 1.0))
