"""The prototxt interpreter: each layer type against Caffe's own formulas, wiring, weights, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.caffe import Net, parse_prototxt, write_caffemodel
from fcnseg.caffe.ops import CaffePool2d, caffe_pooled_size, fill_
from fcnseg.errors import UserError
from fcnseg.models.layers import bilinear_kernel

FLT_MAX = float(np.finfo(np.float32).max)


def naive_caffe_pool(x: np.ndarray, method: str, k: int, s: int, p: int) -> np.ndarray:
    """PoolingLayer::Forward_cpu, transcribed loop by loop (one channel plane)."""
    h, w = x.shape
    ph_n = int(math.ceil((h + 2 * p - k) / s)) + 1
    pw_n = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p:
        if (ph_n - 1) * s >= h + p:
            ph_n -= 1
        if (pw_n - 1) * s >= w + p:
            pw_n -= 1
    out = np.zeros((ph_n, pw_n), np.float64)
    for ph in range(ph_n):
        for pw in range(pw_n):
            hs, ws = ph * s - p, pw * s - p
            if method == "MAX":
                he, we = min(hs + k, h), min(ws + k, w)
                hs, ws = max(hs, 0), max(ws, 0)
                region = x[hs:he, ws:we]
                out[ph, pw] = region.max() if region.size else -FLT_MAX
            else:
                he, we = min(hs + k, h + p), min(ws + k, w + p)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                with np.errstate(invalid="ignore"):  # 0 / 0 when kernel < stride, as in Caffe
                    out[ph, pw] = np.float64(x[hs:he, ws:we].sum()) / size
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_loops(method):
    rng = np.random.default_rng(0)
    for k, s, p in [(2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 2, 1), (3, 1, 1), (3, 3, 2), (1, 3, 0), (5, 3, 2)]:
        pool = CaffePool2d(method, (k, k), (s, s), (p, p))
        for h, w in [(1, 1), (2, 5), (7, 4), (9, 10), (13, 6)]:
            x = rng.standard_normal((h, w)).astype(np.float32)
            ref = naive_caffe_pool(x, method, k, s, p)
            if ref.size == 0:
                with pytest.raises(UserError, match="smaller than"):
                    pool(torch.from_numpy(x)[None, None])
                continue
            got = pool(torch.from_numpy(x)[None, None])[0, 0].numpy()
            assert got.shape == ref.shape, (method, k, s, p, h, w)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True,
                                       err_msg=str((method, k, s, p, h, w)))


def test_pooled_size_differs_from_pytorch_only_where_caffe_does():
    # Caffe drops a window starting in the padding only when there is padding; PyTorch always.
    assert caffe_pooled_size(5, 1, 3, 0) == 3
    assert F.max_pool2d(torch.zeros(1, 1, 5, 5), 1, 3, ceil_mode=True).shape[-1] == 2
    assert caffe_pooled_size(4, 2, 2, 1) == 3 == F.max_pool2d(torch.zeros(1, 1, 4, 4), 2, 2, 1,
                                                              ceil_mode=True).shape[-1]


def test_global_pooling():
    x = torch.randn(2, 3, 5, 7)
    assert torch.allclose(CaffePool2d("AVE", (1, 1), (1, 1), (0, 0), True)(x), x.mean((2, 3), keepdim=True))
    assert torch.equal(CaffePool2d("MAX", (1, 1), (1, 1), (0, 0), True)(x), x.amax((2, 3), keepdim=True))


def test_bilinear_filler_equals_reference_upsample_kernel():
    for k in (4, 16, 32, 63, 64):
        w = fill_(torch.empty(2, 3, k, k), {"type": "bilinear"})
        assert torch.allclose(w[1, 2], bilinear_kernel(k), atol=1e-6)


def _net(text: str, **kw) -> Net:
    return Net(parse_prototxt(text), **kw).eval()


SMALL = """
name: "small"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 stride: 1 dilation: 2 group: 1
                            weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "gconv" type: "Convolution" bottom: "conv" top: "gconv"
        convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 group: 2 bias_term: false
                            weight_filler { type: "xavier" } } }
layer { name: "lrn" type: "LRN" bottom: "gconv" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "lrn2" type: "LRN" bottom: "lrn" top: "lrn2"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "scale" type: "Scale" bottom: "lrn2" top: "scaled"
        scale_param { filler { type: "uniform" min: 1 max: 2 } bias_term: true bias_filler { type: "constant" value: 1 } } }
layer { name: "up" type: "Deconvolution" bottom: "scaled" top: "up"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2 group: 3 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "slice_a" type: "Convolution" bottom: "crop" top: "a"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "data" top: "sum" eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "data" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "crop" top: "cat" }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ave" type: "Pooling" bottom: "cat" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "ave" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "train_only" type: "Dropout" bottom: "prob" top: "t" include { phase: TRAIN } }
"""


def test_small_net_against_hand_written_forward():
    torch.manual_seed(0)
    net = _net(SMALL)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert "train_only" not in net.layer_names and "loss" not in net.layer_names
    p = {name: [t.detach() for t in ps] for name, ps in net.params.items()}
    assert [tuple(t.shape) for t in p["gconv"]] == [(6, 2, 3, 1)]
    assert [tuple(t.shape) for t in p["up"]] == [(6, 2, 4, 4)]
    assert torch.all(p["conv"][1] == 0.5) and torch.all((p["scale"][0] >= 1) & (p["scale"][0] <= 2))
    assert p["fc"] == [] or len(p["fc"]) == 1  # InnerProduct weight waits for its input size
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        blobs = net.forward_blobs({"data": x})
        out = net(x)
    p = {name: [t.detach() for t in ps] for name, ps in net.params.items()}
    c = F.leaky_relu(F.conv2d(x, *p["conv"], padding=2, dilation=2), 0.1)
    g = F.conv2d(c, p["gconv"][0], padding=(1, 0), groups=2)
    sq = F.pad((g * g).unsqueeze(1), (0, 0, 0, 0, 1, 1)).squeeze(1)
    lrn = g / (2 + 0.5 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])) ** 0.75
    lrn2 = lrn * (1 + 0.5 * torch.from_numpy(np.stack([[naive_caffe_pool((lrn[n, ch] ** 2).numpy(), "AVE", 3, 1, 1)
                                                         for ch in range(6)] for n in range(2)])).float()) ** -0.75
    sc = lrn2 * p["scale"][0].view(1, -1, 1, 1) + p["scale"][1].view(1, -1, 1, 1)
    up = F.conv_transpose2d(sc, p["up"][0], stride=2, groups=3)
    crop = up[:, :, 1:9, 2:10]
    a = F.conv2d(crop, *p["slice_a"])
    mx = torch.maximum(0.5 * a - 2 * x, a * x)
    cat = torch.cat([mx, crop], 1)
    ave = torch.from_numpy(np.stack([[naive_caffe_pool(cat[n, ch].numpy(), "AVE", 3, 2, 1) for ch in range(9)]
                                     for n in range(2)])).float()
    fc = F.linear(ave.flatten(1), *p["fc"])
    for name, ref in [("conv", c), ("gconv", g), ("lrn", lrn), ("lrn2", lrn2), ("scaled", sc), ("up", up),
                      ("crop", crop), ("max", mx), ("cat", cat), ("ave", ave), ("fc", fc)]:
        torch.testing.assert_close(blobs[name], ref, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(out, torch.softmax(fc, 1), rtol=1e-4, atol=1e-6)
    assert tuple(p["fc"][0].shape) == (5, 9 * 5 * 5)


def test_weights_load_by_name_with_shape_checks(tmp_path):
    net = _net(SMALL)
    with torch.no_grad():
        net(torch.zeros(1, 3, 8, 8))  # sizes the InnerProduct weight
    rng = np.random.default_rng(0)
    blobs = {name: (net.layer_types[name], [rng.standard_normal(tuple(t.shape)).astype(np.float32) for t in ps])
             for name, ps in net.params.items()}
    blobs["unrelated"] = ("Convolution", [np.ones((1, 1, 1, 1), np.float32)])
    path = write_caffemodel(tmp_path / "w.caffemodel", blobs)
    loaded = Net(parse_prototxt(SMALL), path)
    for name, ps in loaded.params.items():
        for t, ref in zip(ps, blobs[name][1]):
            np.testing.assert_array_equal(t.detach().numpy(), ref)
    report = loaded.load_caffemodel(path)
    assert report.unused == ["unrelated"] and report.missing == [] and "conv" in report.loaded
    with pytest.raises(UserError, match="'unrelated' is not in the net"):
        loaded.load_caffemodel(path, strict=True)
    bad = dict(blobs)
    bad["gconv"] = ("Convolution", [np.zeros((6, 4, 3, 1), np.float32)])
    bad["conv"] = ("Convolution", [blobs["conv"][1][0]])
    bad_path = write_caffemodel(tmp_path / "bad.caffemodel", bad)
    with pytest.raises(UserError) as exc:
        Net(parse_prototxt(SMALL), bad_path)
    msg = str(exc.value)
    assert "layer 'gconv': blob 0 has shape 6x4x3x1, the net expects 6x2x3x1" in msg
    assert "layer 'conv' has 1 blob(s), the net expects 2" in msg


def test_unsupported_layer_type_is_named():
    text = SMALL.replace('name: "lrn2" type: "LRN"', 'name: "lrn2" type: "BatchNorm"')
    with pytest.raises(UserError, match=r"layer 'lrn2' has unsupported type 'BatchNorm'"):
        _net(text)


@pytest.mark.parametrize("text, message", [
    ('layer { name: "c" type: "Convolution" bottom: "nope" top: "c" convolution_param { num_output: 1 kernel_size: 1 } }',
     "needs blob 'nope'"),
    ('layer { name: "d" type: "Input" top: "x" } '
     'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } }',
     "STOCHASTIC"),
    ('layer { name: "d" type: "Input" top: "x" } '
     'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { kernel_size: 1 } }',
     "num_output is required"),
])
def test_bad_prototxts(text, message):
    with pytest.raises(UserError, match=message):
        _net(text)


def test_legacy_v1_deploy_prototxt_and_named_inputs():
    text = """
    input: "color" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
    input: "depth" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
    layers { name: "cat" type: CONCAT bottom: "color" bottom: "depth" top: "data" }
    layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
             convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 1 } } }
    """
    net = _net(text)
    assert net.inputs == ["color", "depth"]
    assert tuple(net.params["conv"][0].shape) == (2, 4, 1, 1)
    color, depth = torch.randn(1, 3, 4, 4), torch.randn(1, 1, 4, 4)
    out = net(color=color, depth=depth)
    torch.testing.assert_close(out, (color.sum(1, keepdim=True) + depth).expand(1, 2, 4, 4))
    with pytest.raises(UserError, match="missing input"):
        net(color=color)
    with pytest.raises(UserError, match="pass them by name"):
        net(color)


def test_input_channels_for_python_data_layers(shared_dir):
    proto = shared_dir / "reference/fcn-berkeleyvision/nyud-fcn32s-color-d/test.prototxt"
    with torch.device("meta"):
        net = Net(proto, input_channels={"depth": 1})
        default = Net(proto)
    assert net.inputs == ["color", "depth"] and net.outputs == ["score"]
    assert tuple(net.params["conv1_1_bgrd"][0].shape) == (64, 4, 3, 3)
    assert default.assumed_channels == {"color": 3, "depth": 3}  # said, not hidden


def test_siftflow_has_two_outputs(shared_dir):
    with torch.device("meta"):
        net = Net(shared_dir / "reference/fcn-berkeleyvision/siftflow-fcn16s/test.prototxt")
    assert net.outputs == ["score_sem", "score_geo"]
    assert tuple(net.params["score_fr_geo"][0].shape) == (3, 4096, 1, 1)
