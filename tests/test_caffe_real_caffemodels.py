"""fcnseg reads caffemodels that real Caffe wrote, and runs them as Caffe does.

Fixtures in ``tests/goldens/caffe/fixtures`` (made by ``bash scripts/caffe_goldens.sh``
with BVLC Caffe, see ``docs/caffe.md``):

- ``small_layer``: current ``layer`` format, saved by Caffe's ``net.save()``
  (Convolution with group, stride, pad, dilation and kernel_h/w; ReLU; LRN across and
  within channels; MAX and AVE pooling with Caffe's rounding and padding; grouped and
  padded Deconvolutions; Crop with two offsets; Eltwise SUM with coefficients, PROD,
  MAX; Scale with bias; InnerProduct).
- ``small_v1``: old V1 ``layers`` format with 4-D legacy blob dimensions, serialised
  from Caffe's own caffe.proto and read back (upgraded) by Caffe to the same blobs.

Each has its prototxt, caffemodel and an ``.npz`` of Caffe's parameters
(``param/LAYER/I``) and of every blob of a forward pass (``blob/NAME``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnseg.caffe import Net, read_caffemodel
from fcnseg.cli.main import main

GOLDENS = Path(__file__).resolve().parent / "goldens" / "caffe"
FIXTURES = GOLDENS / "fixtures"
MANIFEST = json.loads((GOLDENS / "manifest.json").read_text())
NAMES = ["small_layer", "small_v1"]
RTOL = 1e-5


def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", NAMES)
def test_reader_reads_real_caffe_files_exactly(name):
    ref = _npz(name)
    params = {k.split("/")[1] for k in ref if k.startswith("param/")}
    layers = {layer.name: layer for layer in read_caffemodel(FIXTURES / f"{name}.caffemodel") if layer.blobs}
    assert sorted(layers) == sorted(params)
    assert {n: layers[n].type for n in layers} == MANIFEST["fixtures"][name]["types"]
    for lname, layer in layers.items():
        expected = sorted(k for k in ref if k.startswith(f"param/{lname}/"))
        assert len(layer.blobs) == len(expected), lname
        for i, blob in enumerate(layer.blobs):
            want = ref[f"param/{lname}/{i}"]
            assert blob.fits(want.shape), (lname, i, blob.shape, want.shape)
            assert blob.legacy == (name == "small_v1")
            assert blob.data.dtype == np.float32
            np.testing.assert_array_equal(blob.data.reshape(want.shape), want, err_msg=f"{lname}/{i}")


@pytest.mark.parametrize("name", NAMES)
def test_net_runs_real_caffe_files_as_caffe(name):
    ref = _npz(name)
    net = Net(FIXTURES / f"{name}.prototxt", FIXTURES / f"{name}.caffemodel").eval()
    assert sorted(net.params) == sorted({k.split("/")[1] for k in ref if k.startswith("param/")})
    # every blob but the input and the copies Caffe's InsertSplits adds for blobs used twice
    blobs = [k[5:] for k in ref if k.startswith("blob/") and k != "blob/data" and "_split_" not in k]
    assert len(blobs) >= 7
    with torch.no_grad():
        got = net.forward_blobs({"data": torch.from_numpy(ref["blob/data"])}, blobs)
    for blob in blobs:
        want = ref[f"blob/{blob}"]
        ours = got[blob].numpy()
        assert ours.shape == want.shape, blob
        err = np.abs(ours - want).max() / max(np.abs(want).max(), 1e-30)
        assert err <= RTOL, f"{name} {blob}: relative difference {err:.2e} from Caffe"
        assert np.abs(want).max() > 0, blob


@pytest.mark.parametrize("name", NAMES)
def test_cli_convert_lists_real_caffe_files(name, capsys):
    ref = _npz(name)
    assert main(["convert", str(FIXTURES / f"{name}.caffemodel"), "--list"]) == 0
    out = capsys.readouterr().out
    for lname, kind in MANIFEST["fixtures"][name]["types"].items():
        line = next(line for line in out.splitlines() if line.startswith(f"{lname}\t"))
        assert f"\t{kind}\t" in line
        assert "x".join(str(d) for d in ref[f"param/{lname}/0"].shape) in line


CACHED_ALEXNET = Path(os.environ.get("FCNSEG_CAFFE_CACHE", Path.home() / ".cache/fcnseg-caffe")) \
    / "voc-fcn-alexnet-seeded.caffemodel"


@pytest.mark.skipif(not CACHED_ALEXNET.exists(), reason="run scripts/caffe_goldens.sh to make the 230 MB file")
def test_cli_convert_loads_a_reference_net_saved_by_caffe(tmp_path):
    """Optional (needs the script's output): voc-fcn-alexnet with the seeded parameters, saved by
    Caffe, through `fcnseg convert`, equals Caffe's golden scores."""
    from fcnseg.caffe.seeded import seeded_input
    from fcnseg.models import get_model
    from fcnseg.weights import load_weights

    out = tmp_path / "alexnet.safetensors"
    assert main(["convert", str(CACHED_ALEXNET), "--arch", "fcn32s_alexnet", "--out", str(out)]) == 0
    state, meta = load_weights(out)
    model = get_model(meta["model"], num_classes=meta["num_classes"])
    model.load_state_dict(state)
    info = MANIFEST["nets"]["voc-fcn-alexnet"]["sizes"]["37x53"]["blobs"]["score"]
    golden = np.load(GOLDENS / "voc-fcn-alexnet.npz")["37x53/score"]
    with torch.no_grad():
        score = model.eval()(torch.from_numpy(seeded_input("data", (1, 3, 37, 53))))
    s = info["stride"]
    ours = score[0, info["channels"], ::s, ::s].numpy()
    assert np.abs(ours - golden).max() / np.abs(golden).max() <= RTOL
