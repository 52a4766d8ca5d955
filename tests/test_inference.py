"""The Python inference API: load_model resolution, predict / predict_batch, tiling, TTA, ONNX."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnseg
import fcnseg.shipped as shipped_mod
from fcnseg.errors import UserError
from fcnseg.inference import TTA, Segmenter, UntrainedModelWarning, load_model, parse_tta
from fcnseg.inference.loader import ModelInfo
from fcnseg.inference.tiling import dependency_radius, plan_tiles
from fcnseg.models import get_model
from fcnseg.preprocess import normalize
from fcnseg.weights import save_weights

CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                "Pedestrian", "Bicyclist"]


def random_fcn(num_classes: int = 11, seed: int = 0, name: str = "fcn8s_lite0") -> nn.Module:
    """``name`` (fcn8s_lite0) with random weights whose predictions vary over an image.

    A freshly initialised trunk's activations fade to ~1e-8 by stride 32 (BatchNorm
    has identity statistics), which would make every probability ~1/K and every
    comparison meaningless; so the BatchNorm statistics are estimated on a few
    synthetic images first, and the score layers get random non-zero weights.
    """
    from fcnseg.preprocess import normalize

    torch.manual_seed(seed)
    net = get_model(name, num_classes)
    for layer in ("score_fr", "score_pool4", "score_pool3", "score_pool2"):
        if hasattr(net, layer):
            nn.init.normal_(getattr(net, layer).weight, std=0.05)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(torch.stack([normalize(image(128, 160, seed=s), "imagenet") for s in range(4)]))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.01
    return net.eval()


def shipped_meta(num_classes: int = 11) -> dict:
    from fcnseg.viz import camvid_palette, voc_palette

    names = CAMVID_NAMES if num_classes == 11 else [f"c{i}" for i in range(num_classes)]
    pal = camvid_palette() if num_classes == 11 else voc_palette(num_classes)
    return {"model": "fcn8s_lite0", "num_classes": num_classes, "class_names": names,
            "palette": pal.tolist(), "normalization": "imagenet", "options": {"pretrained_backbone": True}}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A throwaway weights file in the shipped format (fp16 safetensors + meta)."""
    path = tmp_path_factory.mktemp("weights") / "camvid-test.safetensors"
    save_weights(random_fcn().state_dict(), path, shipped_meta(), dtype=torch.float16)
    return path


@pytest.fixture(scope="module")
def model(weights_file) -> Segmenter:
    return load_model(weights_file)


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A synthetic picture: waves at several scales, patches of colour, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 127.0, np.float32)
    for _ in range(6):
        f = rng.uniform(0.01, 0.15, 2)
        img += rng.uniform(20, 60, 3) * np.sin(f[0] * xx + f[1] * yy + rng.uniform(0, 6.3))[..., None]
    for _ in range(max(3, h * w // 4000)):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0:y0 + rng.integers(4, 40), x0:x0 + rng.integers(4, 40)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def decisive(probs: np.ndarray, gap: float = 1e-5) -> np.ndarray:
    """Pixels whose best class beats the second by more than ``gap`` (float noise cannot flip them)."""
    top2 = np.sort(probs, axis=0)[-2:]
    return (top2[1] - top2[0]) > gap


# ----------------------------------------------------------------------------- loading
def test_load_from_weights_file(model, weights_file):
    assert model.name == "camvid-test" and model.model == "fcn8s_lite0"
    assert model.num_classes == 11 and model.class_names == CAMVID_NAMES
    assert model.palette.shape == (11, 3) and model.palette[3].tolist() == [128, 64, 128]
    assert model.normalization == "imagenet" and model.trained and model.backend == "torch"
    assert not model.net.training
    # fp16 on disk, float32 in the net, equal to the rounded weights
    ref = random_fcn()
    w = model.net.score_fr.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, ref.score_fr.weight.half().float())
    assert model.receptive_field == 851


def test_load_shipped_name(weights_file, monkeypatch, tmp_path):
    (tmp_path / "my-shipped.safetensors").write_bytes(weights_file.read_bytes())
    monkeypatch.setattr(shipped_mod, "WEIGHTS_DIR", tmp_path)
    assert fcnseg.inference.list_shipped_models() == ["my-shipped"]
    m = fcnseg.load_model("my-shipped")
    assert m.name == "my-shipped" and m.trained and m.num_classes == 11


def test_registered_architecture_is_untrained_and_warns():
    with pytest.warns(UntrainedModelWarning, match="untrained"):
        m = load_model("fcn32s_lite0", num_classes=5)
    assert not m.trained and m.num_classes == 5 and len(m.class_names) == 5
    assert m.predict(image(33, 47)).shape == (33, 47)


def test_unknown_name_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(UserError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="bad.safetensors"):
        load_model(bad)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unknown model file type"):
        load_model(other)
    with pytest.raises(UserError, match="unknown backend"):
        load_model("fcn8s_lite0", backend="tensorrt")


def test_class_count_mismatch(weights_file, tmp_path):
    with pytest.raises(UserError, match=r"has 11 classes but num_classes=21 was requested"):
        load_model(weights_file, num_classes=21)
    # metadata that disagrees with the tensors
    lying = tmp_path / "lying.safetensors"
    save_weights(random_fcn(11).state_dict(), lying, {**shipped_meta(11), "num_classes": 21,
                                                      "class_names": None})
    with pytest.raises(UserError, match="metadata says 21 classes but the weights hold 11"):
        load_model(lying)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "wrongarch.safetensors"
    save_weights(random_fcn(11).state_dict(), path, {**shipped_meta(11), "model": "fcn32s_lite0"})
    with pytest.raises(UserError, match=r"weights do not fit model fcn32s_lite0: .*unexpected"):
        load_model(path)
    nometa = tmp_path / "nometa.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(nometa))
    with pytest.raises(UserError, match="without fcnseg metadata"):
        load_model(nometa)


def test_training_checkpoint(tmp_path, model):
    """A checkpoint as ``fcnseg train`` writes it (verified wrapper, ``meta`` entry, DDP key prefixes)."""
    from fcnseg.training.checkpoint import save_checkpoint
    from fcnseg.viz import camvid_palette

    net = random_fcn()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved from DDP
    palette = (255 - camvid_palette()).tolist()  # not the default: proves the meta palette is used
    ckpt = {"model": state, "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {},
            "position": {"epoch": 3, "micro_in_epoch": 0, "step": 30}, "best": {"mean_iou": 0.1, "step": 20},
            "config": {"model": "fcn8s_lite0", "dataset": "camvid", "model_options": {}},
            "meta": {"model": "fcn8s_lite0", "num_classes": 11, "class_names": CAMVID_NAMES, "palette": palette,
                     "normalization": "imagenet", "options": {"pretrained_backbone": True}, "dataset": "camvid"}}
    path = save_checkpoint(ckpt, tmp_path / "last.pt")
    m = fcnseg.load_model(path)
    assert m.num_classes == 11 and m.class_names == CAMVID_NAMES and m.name == "last"
    assert m.palette.tolist() == palette and m.info.meta["dataset"] == "camvid"
    img = image(40, 56)
    with torch.inference_mode():
        ref = net(normalize(img, "imagenet")[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(m.predict(img), ref)
    with pytest.raises(UserError, match="11 classes but num_classes=3"):
        load_model(path, num_classes=3)

    # an older checkpoint without 'meta': the config describes the model
    del ckpt["meta"]
    ckpt["config"].update({"num_classes": 11, "class_names": CAMVID_NAMES, "normalization": "imagenet"})
    old = load_model(save_checkpoint(ckpt, tmp_path / "old.pt"))
    assert old.class_names == CAMVID_NAMES and old.info.meta["dataset"] == "camvid"
    np.testing.assert_array_equal(old.predict(img), ref)

    # a damaged checkpoint is refused in one line, never half-loaded
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match="flipped.pt: .*corrupt"):
        load_model(tmp_path / "flipped.pt")


class Evil:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_is_loaded_safely(tmp_path):
    import hashlib
    import io

    from fcnseg.training.checkpoint import FORMAT

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"model": "fcn8s_lite0"}, "x": Evil(marker)}, path)
    with pytest.raises(UserError, match="evil.pt: refused: not a weights-only file"):
        load_model(path)
    # the same pickle inside a well-formed wrapper with a correct digest: still refused
    buf = io.BytesIO()
    torch.save({"model": {}, "x": Evil(marker)}, buf)
    payload = buf.getvalue()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, tmp_path / "wrapped.pt")
    with pytest.raises(UserError, match="wrapped.pt: checkpoint payload is not loadable safely"):
        load_model(tmp_path / "wrapped.pt")
    assert not marker.exists()
    bare = tmp_path / "bare.pt"
    torch.save(random_fcn().state_dict(), bare)
    with pytest.raises(UserError, match="bare.pt: not an fcnseg training checkpoint"):
        load_model(bare)


def test_cuda_unavailable_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match="CUDA is not available"):
        load_model("fcn8s_lite0", device="cuda")
    with pytest.raises(UserError, match="unknown device"):
        load_model("fcn8s_lite0", device="gpu0")


# ----------------------------------------------------------------------------- predict
def test_predict_inputs_agree(model, tmp_path):
    img = image(45, 70)
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    a = model.predict(img)
    assert a.shape == (45, 70) and a.dtype == np.uint8
    np.testing.assert_array_equal(model.predict(Image.fromarray(img)), a)
    np.testing.assert_array_equal(model.predict(path), a)
    np.testing.assert_array_equal(model.predict(str(path)), a)
    assert len(np.unique(a)) > 1  # random score weights: the map is not constant


def test_predict_matches_the_raw_net(model, weights_file):
    """The default (optimised: BN folded, depthwise upsampling, NHWC) path gives the raw
    net's answer within float rounding; ``optimize=False`` runs the raw net itself."""
    img = image(37, 51)
    with torch.inference_mode():
        logits = model.net(normalize(img, "imagenet")[None])[0]
    assert "BatchNorm" in model._run.runner.method and "channels_last" in model._run.runner.method
    labels, probs = model.predict(img, return_probs=True)
    top2 = logits.topk(2, 0).values
    clear = (top2[0] - top2[1]) > 1e-4  # pixels whose winner no rounding can flip
    assert clear.float().mean() > 0.99
    np.testing.assert_array_equal(labels[clear.numpy()], logits.argmax(0).numpy()[clear.numpy()])
    assert probs.shape == (11, 37, 51) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(logits, 0).numpy(), atol=2e-5)
    plain = load_model(weights_file, optimize=False)
    assert plain._run.runner is plain.net
    labels, probs = plain.predict(img, return_probs=True)
    np.testing.assert_array_equal(labels, logits.argmax(0).numpy())
    np.testing.assert_allclose(probs, torch.softmax(logits, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 1), (31, 33)])
def test_tiny_images(model, size):
    labels, probs = model.predict(np.full((*size, 3), 128, np.uint8), return_probs=True)
    assert labels.shape == size and probs.shape == (11, *size)


def test_predict_bad_input(model, tmp_path):
    with pytest.raises(UserError, match="no such image file"):
        model.predict(tmp_path / "none.jpg")
    with pytest.raises(UserError, match="dtype float"):
        model.predict(np.zeros((4, 4, 3), np.float32))


def test_predict_batch_of_mixed_sizes_equals_one_by_one(model):
    sizes = [(40, 60), (33, 21), (40, 60), (1, 1), (40, 60), (33, 21), (64, 48)]
    imgs = [image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    batched = model.predict_batch(imgs, batch_size=2, return_probs=True)
    assert len(batched) == len(imgs)
    for img, (lab, prob) in zip(imgs, batched):
        ref_lab, ref_prob = model.predict(img, return_probs=True)
        assert lab.shape == img.shape[:2]
        np.testing.assert_allclose(prob, ref_prob, atol=1e-5)
        sure = decisive(ref_prob)
        assert sure.mean() > 0.99
        np.testing.assert_array_equal(lab[sure], ref_lab[sure])
    labels_only = model.predict_batch(imgs, batch_size=3)
    assert [x.shape for x in labels_only] == sizes
    with pytest.raises(UserError):
        model.predict_batch(imgs, batch_size=0)


# ----------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("name, expected", [("fcn8s_lite0", 456), ("fcn4s_lite0", 456)])
def test_dependency_radius_matches_the_measured_reach(name, expected):
    """A NaN input pixel poisons exactly the output pixels that depend on it: measure how far."""
    net = random_fcn(name=name)
    radius = dependency_radius(net)
    width, worst = 2048, 0
    with torch.inference_mode():
        for phase in range(32):  # every position relative to the stride-32 grid
            x = torch.zeros(1, 3, 1, width)
            c = width // 2 + phase
            x[0, :, 0, c] = float("nan")
            hit = torch.isnan(net(x)[0, 0, 0]).nonzero().flatten()
            worst = max(worst, c - int(hit.min()), int(hit.max()) - c)
    assert worst == radius == expected


def test_tile_plan_rounds_to_the_stride(model):
    grid = model.tile_grid(3000, 200, tile=160)
    assert grid.tile == 160 and grid.margin == 480 and grid.margin >= 456  # exact by default
    assert grid.margin * 2 >= model.receptive_field
    for wy, wx, cy, cx in grid:
        assert wy.start % 32 == 0 and wx.start % 32 == 0
    # windows that would all be the whole image are no tiling at all
    assert model.tile_grid(300, 400, tile=160) is None
    assert model.tile_grid(300, 400, tile=160, overlap=128) is not None
    assert model.tile_grid(300, 400, tile=0) is None
    assert model.tile_grid(1000, 1000) is None  # 'auto' leaves small images whole
    import copy  # 'auto' above the memory budget: the largest windows that fit (see test_auto_tiles_...)

    tight = copy.copy(model)
    tight.memory_budget = int(model.bytes_per_pixel * 2000 * 2000)
    g = tight.tile_grid(3000, 3000)
    windows = [(wy.stop - wy.start) * (wx.stop - wx.start) for wy, wx, _, _ in g]
    assert max(windows) <= 2000 * 2000 and g.computed_pixels == sum(windows)
    assert g.computed_pixels < plan_tiles(3000, 3000, (2000 - 2 * 480) // 32 * 32, None, 456, 32, 912).computed_pixels
    g = plan_tiles(100, 100, 50, overlap=None, radius=None, stride=32)
    assert g.tile == 64 and g.margin == 32  # unknown geometry: a documented tile/4 margin


def _check_tiled_equals_whole(model, img, **kw):
    whole_lab, whole_prob = model.predict(img, return_probs=True, tile=0)
    grid = model.tile_grid(*img.shape[:2], **kw)
    assert grid is not None and len(grid) >= 3
    lab, prob = model.predict(img, return_probs=True, **kw)
    np.testing.assert_allclose(prob, whole_prob, atol=1e-5, rtol=0)
    sure = decisive(whole_prob)
    assert sure.mean() > 0.99
    np.testing.assert_array_equal(lab[sure], whole_lab[sure])
    assert lab.dtype == whole_lab.dtype
    return lab, whole_lab


@pytest.mark.parametrize("shape", [(64, 1500), (1500, 48)])
def test_tiled_equals_whole_image_with_the_default_overlap(model, shape):
    """fcn8s_lite0, random score weights: every window edge inside the image is >= the reach away."""
    _check_tiled_equals_whole(model, image(*shape), tile=160)


class Tiny(nn.Module):
    """A small fully convolutional net (reach of a few pixels, stride 2) for exact 2-D tiling checks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):  # output cropped to the input's size, as an FCN's
        return self.body(x)[..., : x.shape[2], : x.shape[3]]


@pytest.fixture(scope="module")
def tiny() -> Segmenter:
    from fcnseg.card import ModelCard
    from fcnseg.runtime.backends import TorchBackend

    info = ModelInfo("tiny", ModelCard(model="", num_classes=4, class_names=list("abcd"),
                                       palette=np.zeros((4, 3), int).tolist()))
    return Segmenter(TorchBackend(Tiny(), torch.device("cpu")), info, tile=64, overlap=64)


def test_tiled_equals_whole_in_2d_for_a_small_receptive_field(tiny):
    """The 2-D bookkeeping (row and column windows, cores, corners), exact with a small-reach net."""
    img = image(300, 400)
    grid = tiny.tile_grid(300, 400)
    assert len(grid) == 5 * 7 and grid.margin == 32
    lab, prob = tiny.predict(img, return_probs=True)
    ref_lab, ref_prob = tiny.predict(img, return_probs=True, tile=0)
    np.testing.assert_allclose(prob, ref_prob, atol=1e-6)
    sure = decisive(ref_prob)
    np.testing.assert_array_equal(lab[sure], ref_lab[sure])
    # negative control: without overlap the seams differ, so the comparison above can fail
    _, seam_prob = tiny.predict(img, return_probs=True, overlap=0)
    assert np.abs(seam_prob - ref_prob).max() > 1e-3


def test_tiled_300x400_tile160_reduced_overlap(model):
    """The mid-size case of the issue. With the default (exact) overlap every window of a 300x400
    image is the whole image, so tiling is skipped and the result is the whole-image one. A reduced
    overlap tiles it for real and is *not* exact: with this random net (whose reach is the full
    receptive field) agreement rises with the overlap, measured 0.37 / 0.77 / 0.90 / 0.997 for
    overlaps 0 / 128 / 256 / 512."""
    img = image(300, 400)
    whole, whole_prob = model.predict(img, return_probs=True, tile=0)
    np.testing.assert_array_equal(model.predict(img, tile=160), whole)
    agreement, worst = [], []
    for overlap in (0, 128, 256, 512):
        lab, prob = model.predict(img, return_probs=True, tile=160, overlap=overlap)
        agreement.append((lab == whole).mean())
        worst.append(np.abs(prob - whole_prob).max())
    assert agreement == sorted(agreement) and agreement[0] < 0.9 < 0.99 < agreement[-1] < 1
    assert worst == sorted(worst, reverse=True)


def test_tiled_probabilities_into_a_memmap_or_band_writer(tiny, tmp_path):
    from numpy.lib.format import open_memmap

    from fcnseg.inference.npywriter import NpyBandWriter

    img = image(300, 400)
    ref_lab, ref_prob = tiny.predict(img, return_probs=True, tile=0)
    sure = decisive(ref_prob)
    mm = open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(4, 300, 400))
    lab = tiny.predict(img, probs_out=mm)  # 5 x 7 tiles
    mm.flush()
    del mm
    with NpyBandWriter(tmp_path / "w.npy", (4, 300, 400)) as writer:
        lab2 = tiny.predict(img, probs_out=writer)
    for name, labels in (("m.npy", lab), ("w.npy", lab2)):
        saved = np.load(tmp_path / name)
        assert saved.shape == (4, 300, 400) and saved.dtype == np.float32
        np.testing.assert_allclose(saved, ref_prob, atol=1e-6)
        np.testing.assert_array_equal(labels[sure], ref_lab[sure])
    with NpyBandWriter(tmp_path / "whole.npy", (4, 20, 30)) as writer:  # untiled: one write
        tiny.predict(img[:20, :30], probs_out=writer)
    np.testing.assert_allclose(np.load(tmp_path / "whole.npy"), tiny.predict(img[:20, :30], True)[1], atol=1e-6)
    with pytest.raises(ValueError):
        tiny.predict(img, probs_out=np.zeros((3, 2, 2), np.float32))


# ----------------------------------------------------------------------------- TTA
def test_parse_tta():
    assert parse_tta("flip,scales=0.75,1,1.25") == TTA(flip=True, scales=(0.75, 1.0, 1.25))
    assert parse_tta("scales=0.5,1,flip") == TTA(flip=True, scales=(0.5, 1.0))
    assert parse_tta("flip") == TTA(flip=True)
    assert parse_tta(None) == parse_tta("none") == parse_tta("") == TTA()
    assert not TTA().active and TTA(flip=True).num_views == 2
    assert str(parse_tta("flip,scales=0.75,1")) == "flip,scales=0.75,1"
    for bad in ("rotate", "scales=abc", "scales=0", "scales=-1", "flip,,scales=1", "scales=1,scales=2"):
        with pytest.raises(UserError):
            parse_tta(bad)


def test_flip_tta_is_mirror_symmetric(model):
    half = image(40, 32)
    sym = np.concatenate([half, half[:, ::-1]], axis=1)  # a left-right symmetric picture
    labels, probs = model.predict(sym, return_probs=True, tta="flip")
    np.testing.assert_allclose(probs, probs[:, :, ::-1], atol=1e-6)
    plain = model.predict(sym, return_probs=True)[1]
    assert np.abs(plain - plain[:, :, ::-1]).max() > 1e-3  # the net alone is not symmetric
    sure = decisive(probs)
    np.testing.assert_array_equal(labels[sure], labels[:, ::-1][sure])


def test_flip_tta_is_flip_equivariant(model):
    img = image(36, 52)
    _, p = model.predict(img, return_probs=True, tta="flip")
    _, pf = model.predict(np.ascontiguousarray(img[:, ::-1]), return_probs=True, tta="flip")
    np.testing.assert_allclose(pf, p[:, :, ::-1], atol=1e-6)


def test_multiscale_tta(model):
    img = image(45, 61)
    _, plain = model.predict(img, return_probs=True)
    _, one = model.predict(img, return_probs=True, tta="scales=1")
    np.testing.assert_allclose(one, plain, atol=1e-6)
    labels, probs = model.predict(img, return_probs=True, tta="flip,scales=0.75,1,1.25")
    assert labels.shape == (45, 61) and probs.shape == (11, 45, 61)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    assert np.abs(probs - plain).max() > 1e-3  # the other views changed something
    # the average of the views, computed by hand for one extra scale
    _, p2 = model.predict(img, return_probs=True, tta="scales=1,2")
    with torch.inference_mode():
        x = normalize(img, "imagenet")[None]
        x2 = torch.nn.functional.interpolate(x, size=(90, 122), mode="bilinear", align_corners=False)
        l2 = torch.nn.functional.interpolate(model.net(x2), size=(45, 61), mode="bilinear", align_corners=False)
        ref = (torch.softmax(model.net(x), 1) + torch.softmax(l2, 1))[0].numpy() / 2
    np.testing.assert_allclose(p2, ref, atol=1e-5)


def test_tta_with_batches_and_tiles(model):
    imgs = [image(30, 40, 1), image(30, 40, 2), image(20, 20, 3)]
    out = model.predict_batch(imgs, batch_size=2, return_probs=True, tta="flip")
    for img, (lab, prob) in zip(imgs, out):
        _, ref = model.predict(img, return_probs=True, tta="flip")
        np.testing.assert_allclose(prob, ref, atol=1e-5)
    # flip TTA on tiles is exact: window ends are stride-aligned from the far side too
    wide = image(48, 1200)
    assert model.tile_grid(48, 1200, tile=160) is not None
    lab, prob = model.predict(wide, return_probs=True, tile=160, tta="flip")
    _, ref = model.predict(wide, return_probs=True, tile=0, tta="flip")
    np.testing.assert_allclose(prob, ref, atol=1e-5)
    sure = decisive(ref)
    np.testing.assert_array_equal(lab[sure], ref.argmax(0)[sure])


def test_multiscale_tta_on_tiles_is_close_not_exact(model):
    """Each window is rescaled on its own (documented in tiling.py): close to, not equal to,
    multi-scale TTA of the whole image."""
    wide = image(48, 1200)
    lab, prob = model.predict(wide, return_probs=True, tile=160, tta="scales=0.75,1")
    ref_lab, ref = model.predict(wide, return_probs=True, tile=0, tta="scales=0.75,1")
    agree = (lab == ref_lab).mean()
    assert 0.9 < agree < 1.0


# ----------------------------------------------------------------------------- ONNX backend
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import json

    net = random_fcn()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}})
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fcnseg", json.dumps(shipped_meta())
    onnx.save(proto, str(path))
    return path, net


def test_onnx_backend_matches_torch(onnx_file, model):
    path, net = onnx_file
    m = load_model(path)
    assert m.backend == "onnxruntime" and m.net is None and m.num_classes == 11
    assert m.class_names == CAMVID_NAMES and m.receptive_field == 851  # geometry from the metadata
    img = image(50, 70)
    lab, prob = m.predict(img, return_probs=True)
    with torch.inference_mode():
        ref = torch.softmax(net(normalize(img, "imagenet")[None]), 1)[0].numpy()
    np.testing.assert_allclose(prob, ref, atol=1e-4)
    sure = decisive(ref, 1e-3)
    np.testing.assert_array_equal(lab[sure], ref.argmax(0)[sure])
    batch = m.predict_batch([img, image(20, 30)], batch_size=2)
    np.testing.assert_array_equal(batch[0], lab)
    with pytest.raises(UserError, match="runs with backend onnxruntime"):
        load_model(path, backend="torch")


def test_onnxruntime_backend_needs_an_onnx_file(weights_file):
    with pytest.raises(UserError, match="needs an .onnx file"):
        load_model(weights_file, backend="onnxruntime")
    with pytest.raises(UserError, match="needs an .onnx file"):
        load_model("fcn8s_lite0", backend="onnxruntime")


def test_bad_onnx_file(tmp_path):
    pytest.importorskip("onnxruntime")
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(UserError, match="broken.onnx: not a loadable ONNX model"):
        load_model(p)


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]"])
def test_onnx_file_with_broken_metadata_is_refused(onnx_file, tmp_path, bad):
    import onnx

    proto = onnx.load(str(onnx_file[0]))
    for entry in proto.metadata_props:
        if entry.key == "fcnseg":
            entry.value = bad
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(UserError, match="'fcnseg' metadata is not valid JSON"):
        load_model(path)


def test_auto_tiles_from_the_memory_budget(model):
    """tile="auto": the whole image when it fits the budget, else the largest windows that fit;
    either way the labels equal whole-image inference."""
    import copy

    from fcnseg.inference.tiling import auto_tile_size

    bpp = model.bytes_per_pixel
    assert 150 < bpp < 1000  # fcn8s_lite0, 11 classes: measured peak growth ~155 B/px on the CPU
    img = image(96, 1500)
    roomy = copy.copy(model)
    roomy.memory_budget = int(bpp * 96 * 1500) + 1
    assert roomy.tile_grid(96, 1500) is None
    tight = copy.copy(model)
    tight.memory_budget = int(bpp * 96 * 1500 * 0.9)
    grid = tight.tile_grid(96, 1500)
    assert grid is not None and len(grid) >= 2 and grid.margin == model.tile_margin
    cores = auto_tile_size(96, 1500, bpp, tight.memory_budget, model.tile_margin, 32)
    assert (grid.tile, grid.tile_cols) == cores and cores[0] >= 96  # strips: the short side stays whole
    lab, prob = tight.predict(img, return_probs=True)
    ref_lab, ref_prob = model.predict(img, return_probs=True, tile=0)
    np.testing.assert_allclose(prob, ref_prob, atol=1e-5)
    sure = decisive(ref_prob)
    np.testing.assert_array_equal(lab[sure], ref_lab[sure])
    np.testing.assert_array_equal(model.predict(img, tile=grid.cores), lab)  # the planned cores, given explicitly
    # predict_batch stacks only as many images as the budget holds, with the same labels
    two = copy.copy(model)
    two.memory_budget = int(bpp * 96 * 128 * 2.5)
    assert two.batch_fits(96, 128, 8) == 2
    batch = [image(96, 128, seed=s) for s in range(3)]
    for got, im in zip(two.predict_batch(batch, batch_size=8), batch):
        np.testing.assert_array_equal(got, model.predict(im, tile=0))


def test_auto_tile_size_shrinks_the_margin_share():
    from fcnseg.inference.tiling import TileGrid, auto_tile_size

    bpp, margin = 300.0, 480  # Lite0-like

    def grid(n: int, cores: tuple[int, int]) -> TileGrid:
        return TileGrid(n, n, cores[0], margin, 32, cores[1])

    assert auto_tile_size(1000, 1000, bpp, 10 ** 9, margin) is None  # fits: whole image
    small = auto_tile_size(6000, 6000, bpp, 2 * 2 ** 30, margin)
    big = auto_tile_size(6000, 6000, bpp, 8 * 2 ** 30, margin)
    assert all(c % 32 == 0 for c in (*small, *big))
    share = {k: grid(6000, c).computed_pixels / 6000 ** 2 for k, c in (("small", small), ("big", big))}
    assert share["big"] < share["small"] and share["big"] < 1.2
    for budget, cores in ((2 * 2 ** 30, small), (8 * 2 ** 30, big)):
        g = grid(6000, cores)
        rows, cols = g.spans(6000, g.tile, margin), g.spans(6000, g.tile_cols, margin)
        largest = max(w1 - w0 for w0, w1, _, _ in rows) * max(w1 - w0 for w0, w1, _, _ in cols)
        assert largest * bpp <= budget  # every window fits the budget
    # balanced cores: 10000 px cut in two halves (not 4352 + 4352 + 1296), edge windows with one margin
    assert auto_tile_size(10000, 10000, 227.0, int(7.4e9), margin) == (5024, 5024)
    # the least computed grid wins, even oblong: a wide strip image is cut across its long side only
    h, w = auto_tile_size(2000, 40000, 300.0, 2 * 2 ** 30, margin)
    assert h >= 2000 and w < 40000
    # a budget too small for even one margin's window still gives a usable (if costly) tile
    assert min(auto_tile_size(6000, 6000, bpp, 10 ** 6, margin)) >= margin



def test_the_cpu_fast_path_gets_channels_last_input_and_the_same_labels(weights_file):
    """The optimised CPU net runs channels-last: images are normalised straight into that order
    (single images and batches), with the labels of the plain module."""
    fast, plain = load_model(weights_file), load_model(weights_file, optimize=False)
    assert fast._channels_last and not plain._channels_last
    imgs = [image(40, 56, seed=s) for s in range(2)]
    assert fast._batch_tensor(imgs[:1]).is_contiguous(memory_format=torch.channels_last)
    assert fast._batch_tensor(imgs).is_contiguous(memory_format=torch.channels_last)
    assert plain._batch_tensor(imgs).is_contiguous()
    for a, b in zip(fast.predict_batch(imgs), plain.predict_batch(imgs)):
        assert (a == b).mean() > 0.999
