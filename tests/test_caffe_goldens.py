"""fcnseg against the real Caffe: every reference net, run by BVLC Caffe, is the oracle.

``tests/goldens/caffe`` holds what the official Caffe (commit and build in
``manifest.json``; made by ``bash scripts/caffe_goldens.sh``) computed for each reference
net of ``../shared/reference/fcn-berkeleyvision`` at several awkward input sizes, with
parameters and inputs from the seeded recipe of :mod:`fcnseg.caffe.seeded` (the same
recipe regenerates them here, and the manifest's checksums prove it). Caffe is not
needed to run these tests.

Two things must equal Caffe's blobs, within ``RTOL`` relative (max abs difference / max
abs golden value; float32 summation order differs between Caffe's im2col + OpenBLAS and
PyTorch, about 1e-6 in practice):
- ``fcnseg.caffe.Net`` on the reference prototxt: the score blobs and every Crop
  layer's input and output;
- fcnseg's own model (``get_model`` via ``convert_caffemodel``, the path ``fcnseg convert``
  takes): the scores.
The default suite runs one of the 1x1, 37x53 and 64x80 inputs for every net (in turns);
``-m slow`` runs the other sizes (503x517 among them) for every net.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fcnseg.caffe import Net
from fcnseg.caffe.caffemodel import Blob, CaffeLayer
from fcnseg.caffe.convert import convert_caffemodel
from fcnseg.caffe.seeded import seeded_blob, seeded_input

GOLDENS = Path(__file__).resolve().parent / "goldens" / "caffe"
MANIFEST = json.loads((GOLDENS / "manifest.json").read_text())
REF = "reference/fcn-berkeleyvision"
RTOL = 1e-5
# In this order consecutive nets share the VGG trunk's regenerated blobs (see _BLOBS).
ARCH = {"voc-fcn32s": "fcn32s_vgg16", "voc-fcn16s": "fcn16s_vgg16", "voc-fcn8s": "fcn8s_vgg16",
        "voc-fcn8s-atonce": "fcn8s_atonce_vgg16", "pascalcontext-fcn32s": "fcn32s_vgg16_context",
        "pascalcontext-fcn16s": "fcn16s_vgg16_context", "pascalcontext-fcn8s": "fcn8s_vgg16_context",
        "nyud-fcn32s-color": "fcn32s_vgg16", "nyud-fcn32s-hha": "fcn32s_vgg16",
        "nyud-fcn32s-color-d": "fcn32s_vgg16_rgbd", "siftflow-fcn32s": "fcn32s_vgg16_siftflow",
        "siftflow-fcn16s": "fcn16s_vgg16_siftflow", "siftflow-fcn8s": "fcn8s_vgg16_siftflow",
        "nyud-fcn32s-color-hha": "fcn32s_vgg16_rgb_hha", "voc-fcn-alexnet": "fcn32s_alexnet"}

# The default suite runs one awkward size per net, both sides (a VGG forward costs ~1 s on
# one core); the three small sizes take turns across the nets. ``-m slow`` runs the rest.
FAST_SIZES = ("1x1", "37x53", "64x80")
FAST = {net: FAST_SIZES[i % len(FAST_SIZES)] for i, net in enumerate(ARCH)}
CASES = [pytest.param(net, size, id=f"{net}-{size}", marks=() if FAST[net] == size else pytest.mark.slow)
         for net in ARCH for size in MANIFEST["sizes"]]


def test_every_reference_net_has_goldens(shared_dir):
    nets = sorted(p.parent.name for p in (shared_dir / REF).glob("*/*.prototxt")
                  if p.stem in ("val", "test"))
    assert sorted(MANIFEST["nets"]) == sorted(ARCH) == nets
    assert set(FAST_SIZES) < set(MANIFEST["sizes"]) and set(FAST.values()) == set(FAST_SIZES)
    assert any(int(s.split("x")[0]) > 500 for s in MANIFEST["sizes"])


@dataclass
class Case:
    name: str
    meta: dict
    goldens: dict[str, np.ndarray]
    net: Net
    model: nn.Module


_BLOBS: dict[tuple, np.ndarray] = {}  # consecutive nets share the VGG trunk's values


def _checksum(values: np.ndarray) -> list[float]:
    """Caffe's checksum of a blob (sum, sum of squares, first, last) in float64, in chunks."""
    flat = values.reshape(-1)
    total = squares = 0.0
    for i in range(0, flat.size, 1 << 22):
        chunk = flat[i:i + (1 << 22)].astype(np.float64)
        total += chunk.sum()
        squares += np.dot(chunk, chunk)
    return [total, squares, float(flat[0]), float(flat[-1])]


def _regenerate(meta: dict) -> list[CaffeLayer]:
    """The net's parameters from the recipe, at Caffe's shapes; checked against Caffe's checksums."""
    used, layers = set(), []
    for name, info in meta["params"].items():
        blobs = []
        for i, blob in enumerate(info["blobs"]):
            key = (name, i, info["type"], tuple(blob["shape"]))
            if key not in _BLOBS:
                _BLOBS[key] = seeded_blob(name, i, info["type"], blob["shape"])
                np.testing.assert_allclose(_checksum(_BLOBS[key]), blob["checksum"], rtol=1e-6,
                                           err_msg=f"{name}/{i}")
            used.add(key)
            blobs.append(Blob(_BLOBS[key]))
        layers.append(CaffeLayer(name, info["type"], blobs))
    for key in set(_BLOBS) - used:
        del _BLOBS[key]
    return layers


def _reference_net(prototxt, meta: dict, layers: list[CaffeLayer]) -> Net:
    channels = {b: c for b, c in meta["inputs"].items() if c != 3}
    net = Net(prototxt, layers, input_channels=channels).eval()
    assert sorted(net.params) == sorted(meta["params"])
    for name, params in net.params.items():
        assert net.layer_types[name] == meta["params"][name]["type"]
        assert [list(p.shape) for p in params] == [b["shape"] for b in meta["params"][name]["blobs"]], name
    return net


_LAST: list[Case] = []  # the net under test; tests come grouped by net (CASES order)


@pytest.fixture(scope="module", autouse=True)
def _free_memory():
    """The caches hold ~1 GB (blobs, a reference net and a model): free them after this file."""
    yield
    _LAST.clear()
    _BLOBS.clear()


def _case(name: str, shared_dir: Path) -> Case:
    if _LAST and _LAST[0].name == name:
        return _LAST[0]
    _LAST.clear()
    meta = MANIFEST["nets"][name]
    layers = _regenerate(meta)
    net = _reference_net(shared_dir / REF / meta["prototxt"], meta, layers)
    model, conversion = convert_caffemodel(layers, ARCH[name])
    assert sorted(conversion.loaded) == sorted(meta["params"]) and not conversion.classifier
    with np.load(GOLDENS / f"{name}.npz") as data:
        goldens = {k: data[k] for k in data.files}
    _LAST.append(Case(name, meta, goldens, net, model.eval()))
    return _LAST[0]


def _inputs(case: Case, size: str) -> dict[str, torch.Tensor]:
    h, w = (int(v) for v in size.split("x"))
    feed = {}
    for blob, ch in case.meta["inputs"].items():
        x = seeded_input(blob, (1, ch, h, w)).astype(np.float64)
        expected = case.meta["sizes"][size]["input_checksums"][blob]
        np.testing.assert_allclose([x.sum(), (x * x).sum(), x.flat[0], x.flat[-1]], expected, rtol=1e-6)
        feed[blob] = torch.from_numpy(x.astype(np.float32))
    return feed


def _check(case: Case, size: str, blob: str, value: torch.Tensor, who: str) -> float:
    info = case.meta["sizes"][size]["blobs"][blob]
    golden = case.goldens[f"{size}/{blob}"]
    assert list(value.shape) == info["shape"], f"{who} {case.name} {size} {blob}: shape"
    s = info["stride"]
    ours = value[0, info["channels"], ::s, ::s].double().numpy()
    err = float(np.abs(ours - golden).max() / max(np.abs(golden).max(), 1e-30))
    assert err <= RTOL, f"{who} {case.name} {size} {blob}: relative difference {err:.2e} from Caffe"
    return err


@pytest.mark.parametrize("name, size", CASES)
def test_fcnseg_equals_caffe(name, size, shared_dir):
    case = _case(name, shared_dir)
    feed = _inputs(case, size)
    # 1. the reference prototxt run by fcnseg.caffe.Net: scores and every crop's input and output
    stored = list(case.meta["sizes"][size]["blobs"])
    with torch.no_grad():
        blobs = case.net.forward_blobs(feed, stored)
    net_err = max(_check(case, size, blob, blobs[blob], "fcnseg.caffe.Net") for blob in stored)
    # 2. fcnseg's own model, filled as `fcnseg convert` fills it: the scores
    x = torch.cat(list(feed.values()), dim=1)  # the models take modalities concatenated, colour first
    with torch.no_grad():
        out = case.model(x)
    outputs = case.meta["outputs"]
    if isinstance(out, dict):  # SIFT Flow: {"sem": ..., "geo": ...} for score_sem, score_geo
        assert sorted(f"score_{k}" for k in out) == sorted(outputs)
        model_err = max(_check(case, size, f"score_{head}", scores, ARCH[case.name]) for head, scores in out.items())
    else:
        assert outputs == ["score"]
        model_err = _check(case, size, "score", out, ARCH[case.name])
    print(f"{name} {size}: max relative difference from Caffe: Net {net_err:.1e}, {ARCH[name]} {model_err:.1e}")


def test_a_one_pixel_crop_shift_is_caught(shared_dir):
    """Guards the goldens themselves: the final crop moved by one pixel must fail."""
    meta = MANIFEST["nets"]["voc-fcn-alexnet"]
    text = (shared_dir / REF / meta["prototxt"]).read_text()
    assert "offset: 18" in text
    from fcnseg.caffe import parse_prototxt

    net = _reference_net(parse_prototxt(text.replace("offset: 18", "offset: 19")), meta, _regenerate(meta))
    case = Case("voc-fcn-alexnet", meta, dict(np.load(GOLDENS / "voc-fcn-alexnet.npz")), net, nn.Identity())
    with torch.no_grad():
        score = net.forward_blobs(_inputs(case, "37x53"), ["score"])["score"]
    with pytest.raises(AssertionError, match="relative difference"):
        _check(case, "37x53", "score", score, "shifted")
