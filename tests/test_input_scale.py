"""A model card's ``input_scale``: the net sees every image resized by it (a net trained on enlarged
images runs at the scale it learned), in predict, tiles, batches, eval and training's validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fcnseg.card import CARD_VERSION, ModelCard
from fcnseg.errors import UserError
from fcnseg.inference import TTA, load_model
from fcnseg.inference.tiling import scaled_geometry
from fcnseg.inference.tta import at_input_scale, resize_exact
from fcnseg.weights import save_weights
from test_inference import decisive, image, random_fcn, shipped_meta  # noqa: E402
from test_training import _write_camvid  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same random weights with input_scale 1 and 1.5 in their cards."""
    root = tmp_path_factory.mktemp("scaled")
    sd = random_fcn().state_dict()
    plain, scaled = root / "plain.safetensors", root / "scaled.safetensors"
    save_weights(sd, plain, shipped_meta())
    save_weights(sd, scaled, {**shipped_meta(), "card_version": CARD_VERSION, "input_scale": 1.5})
    return plain, scaled


def test_card_field_round_trips_and_is_checked():
    card = ModelCard(model="fcn8s_lite0", num_classes=3, input_scale=1.5)
    again = ModelCard.from_json(card.to_json())
    assert again.input_scale == 1.5 and json.loads(card.to_json())["card_version"] == CARD_VERSION >= 2
    assert ModelCard.from_dict({"card_version": 1, "model": "m", "num_classes": 2}).input_scale == 1.0
    for bad in (0, -1, 100, "big"):
        with pytest.raises(UserError, match="input_scale"):
            ModelCard(model="m", num_classes=2, input_scale=bad)


def test_views_multiply_the_test_time_scales():
    assert at_input_scale(TTA(), 1.5) == TTA(scales=(1.5,))
    assert at_input_scale(TTA(flip=True, scales=(0.5, 1.0)), 2.0) == TTA(flip=True, scales=(1.0, 2.0))
    assert at_input_scale(TTA(flip=True), 1.0) == TTA(flip=True)


def test_resize_exact_samples_at_the_scale_so_crops_agree():
    x = torch.randn(1, 3, 41, 65)
    whole = resize_exact(x, (62, 98), 1.5)
    crop = resize_exact(x[..., 2:, 4:], (58, 92), 1.5)  # origin (2, 4) -> (3, 6) in the resized image
    assert torch.equal(whole[..., 5:53, 8:86], crop[..., 2:50, 2:80])  # bit for bit, away from the crop's edge
    ref = torch.nn.functional.interpolate(x[..., :40, :64], size=(60, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_exact(x[..., :40, :64], (60, 96), 1.5), ref, atol=1e-4, rtol=0)
    down = torch.nn.functional.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False,
                                           recompute_scale_factor=False)
    torch.testing.assert_close(resize_exact(x, tuple(down.shape[-2:]), 0.75), down, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_resize_is_bit_identical_to_gathering(monkeypatch, dtype):
    """The per-phase strided lerps give the gather path's values bit for bit, edges included, in
    both memory layouts (tiles rely on it: a tile and the whole image may take either path)."""
    from fcnseg.inference import tta

    gen = torch.Generator().manual_seed(0)
    cases = []
    for scale in (1.5, 1 / 1.5, 2.0, 0.5, 0.75, 1.25, 3.0, 1.1, 0.37):
        for h, w in ((7, 9), (61, 97), (36, 48)):
            x = torch.randn(2, 5, h, w, generator=gen).to(dtype)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            cases += [(x, size, scale), (x.contiguous(memory_format=torch.channels_last), size, scale)]
    strided = [resize_exact(*case) for case in cases]
    monkeypatch.setattr(tta, "_MAX_STRIDED_PHASES", 0)  # every axis by gathering
    for case, fast in zip(cases, strided):
        assert torch.equal(resize_exact(*case), fast), case[1:]


def test_one_view_at_a_scale_gives_logits_with_the_probabilities_argmax():
    """A net run at its input scale is one view: tta_scores returns its logits mapped back (no
    softmax), whose argmax is that of the one-view probabilities."""
    from fcnseg.inference.tta import tta_probs, tta_scores

    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 30, 44)
    with torch.no_grad():
        logits, is_prob = tta_scores(conv, x, TTA(scales=(1.5,)))
        probs = tta_probs(conv, x, TTA(scales=(1.5,)))
        _, averaged = tta_scores(conv, x, TTA(scales=(1.0, 1.5)))
    assert not is_prob and averaged and logits.shape == probs.shape == (2, 4, 30, 44)
    torch.testing.assert_close(torch.softmax(logits, 1), probs)
    assert torch.equal(logits.argmax(1), probs.argmax(1))


def test_scaled_geometry_aligns_windows_in_the_resized_image():
    radius, align, rf = scaled_geometry(100, 32, 200, 1.5)
    assert align == 64 and (align * 1.5) % 32 == 0
    assert radius == 70 and rf == 138  # ceil(102 / 1.5) + 2, ceil(200 / 1.5) + 4
    assert scaled_geometry(100, 32, None, 2.0)[1:] == (16, None)


def test_predict_runs_the_net_at_the_cards_scale(files):
    plain, scaled = (load_model(f, precision="fp32") for f in files)
    assert scaled.input_scale == 1.5 and plain.input_scale == 1.0
    img = image(60, 84, 3)
    lab, prob = scaled.predict(img, return_probs=True)
    ref_lab, ref_prob = plain.predict(img, return_probs=True, tta="scales=1.5")
    np.testing.assert_allclose(prob, ref_prob, atol=1e-6)
    _, unscaled = plain.predict(img, return_probs=True)
    assert np.abs(prob - unscaled).max() > 1e-3  # the scale changes the result
    # user TTA multiplies: flip at input scale 1.5 is flip at 1.5
    _, p_flip = scaled.predict(img, return_probs=True, tta="flip")
    _, ref_flip = plain.predict(img, return_probs=True, tta="flip,scales=1.5")
    np.testing.assert_allclose(p_flip, ref_flip, atol=1e-6)
    # batches give the one-by-one result
    out = scaled.predict_batch([img, image(60, 84, 4)], batch_size=2, return_probs=True)
    np.testing.assert_allclose(out[0][1], prob, atol=1e-5)


def test_tiles_at_an_input_scale_equal_the_whole_image(files):
    scaled = load_model(files[1], precision="fp32")
    img = image(150, 1001, 5)  # odd width: the last window's resized size is rounded like the image's
    grid = scaled.tile_grid(150, 1001, tile=128)
    assert grid is not None and len(grid) > 1 and grid.margin % 64 == 0
    lab, prob = scaled.predict(img, return_probs=True, tile=128)
    ref_lab, ref = scaled.predict(img, return_probs=True, tile=0)
    np.testing.assert_allclose(prob, ref, atol=1e-5)
    sure = decisive(ref)
    np.testing.assert_array_equal(lab[sure], ref_lab[sure])


def test_eval_applies_the_cards_scale(files, tmp_path):
    from fcnseg.evaluate import evaluate

    plain, scaled = (load_model(f, precision="fp32") for f in files)

    from fcnseg.data import get_dataset

    data = get_dataset("camvid", _write_camvid(tmp_path), split="val")
    at_card = evaluate(scaled.net, data, card=scaled.card, progress=False).scores
    by_hand = evaluate(plain.net, data, card=plain.card, tta="scales=1.5", progress=False).scores
    at_one = evaluate(plain.net, data, card=plain.card, progress=False).scores
    assert at_card["mean_iou"] == pytest.approx(by_hand["mean_iou"], abs=1e-9)
    assert at_card["pixel_acc"] != pytest.approx(at_one["pixel_acc"], abs=1e-9)


def test_training_records_the_scale_and_validates_at_it(tmp_path):
    from fcnseg.card import ModelCard
    from fcnseg.training import load_config, train
    from fcnseg.weights import load_weights
    from test_training import _config, _rows

    root = _write_camvid(tmp_path / "data")
    run = tmp_path / "run"
    train(load_config(_config(root, run, input_scale=1.5, scale_range=[1.125, 2.25], crop_size=[24, 32],
                              epochs=1)))
    _, meta = load_weights(run / "final.safetensors")
    assert ModelCard.from_meta(meta, source="final").input_scale == 1.5
    model = load_model(run / "final.safetensors", precision="fp32", optimize=False)
    assert model.input_scale == 1.5
    from fcnseg.data import get_dataset
    from fcnseg.evaluate import evaluate

    last_val = [r for r in _rows(run) if r["type"] == "val"][-1]
    at_scale = evaluate(model.net, get_dataset("camvid", root, split="val"), card=model.card, progress=False)
    assert last_val["pixel_acc"] == pytest.approx(at_scale.scores["pixel_acc"], abs=1e-6)


def test_bench_says_what_image_a_scaled_card_serves(files, capsys):
    from fcnseg.cli.main import main

    _, scaled = files
    assert main(["bench", "--model", str(scaled), "--size", "48x64", "--repeats", "1", "--warmup", "1",
                 "--threads", "1", "--precision", "fp32", "--gemm-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "runs images at 1.5x" in out and "48x64 net input" in out and "about 32x43" in out
