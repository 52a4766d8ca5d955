"""The equivalence proof: the reference prototxt, run by ``fcnseg.caffe.Net``, and fcnseg's own model,
filled by ``convert`` from the same random caffemodel, give the same scores.

Both sides read one caffemodel written by our writer with random weights for every
learnable layer, at the real shapes (134M parameters for the VGG nets). A full-size
VGG forward costs ~1 s on one core, so the default suite runs two input sizes per net
(odd ones among them; different sizes for different nets) and the ``slow`` test runs
more, up to 500 x 500. Scales are chosen so activations stay O(1), so that a wrong
layout (transposed deconvolution, wrong crop, floor pooling) shows as a large error.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fcnseg.caffe import Net, parse_prototxt, read_caffemodel, write_caffemodel
from fcnseg.caffe.convert import conversion_card, convert_caffemodel, export_caffemodel, model_to_caffe
from fcnseg.cli.main import main
from fcnseg.errors import UserError
from fcnseg.models.layers import bilinear_kernel
from fcnseg.weights import load_weights

REF = "reference/fcn-berkeleyvision"
ARCH = {"voc-fcn32s": "fcn32s_vgg16", "voc-fcn16s": "fcn16s_vgg16", "voc-fcn8s": "fcn8s_vgg16",
        "voc-fcn8s-atonce": "fcn8s_atonce_vgg16", "voc-fcn-alexnet": "fcn32s_alexnet"}
FAST_SIZES = {"voc-fcn32s": [(1, 1), (45, 62)], "voc-fcn16s": [(17, 3), (64, 31)],
              "voc-fcn8s": [(7, 9), (33, 65)], "voc-fcn8s-atonce": [(2, 1), (35, 35)],
              "voc-fcn-alexnet": [(1, 1), (63, 47), (100, 129), (227, 227)]}
SLOW_SIZES = [(1, 1), (5, 3), (31, 32), (97, 64), (129, 130), (255, 257), (500, 333), (500, 500)]
RTOL = 1e-4


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def random_blob(name: str, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic random values per (layer, blob): He-scaled weights, small biases."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{index}".encode()))
    values = torch.randn(shape, generator=gen)
    if index == 0 and len(shape) > 1:
        values *= (2.0 / int(np.prod(shape[1:]))) ** 0.5
    else:
        values *= 0.1
    return values.numpy()


@dataclass
class Case:
    name: str
    arch: str
    net: Net
    model: nn.Module
    layers: dict[str, tuple[str, list[np.ndarray]]]
    path: Path


_BLOBS: dict[tuple[str, int, tuple[int, ...]], np.ndarray] = {}  # the VGG trunks share their weights


@pytest.fixture(scope="module", params=list(ARCH), ids=list(ARCH))
def pair(request, shared_dir, tmp_path_factory):
    name = request.param
    net = Net(shared_dir / REF / name / "val.prototxt").eval()
    layers = {}
    for layer, params in net.params.items():
        blobs = []
        for i, p in enumerate(params):
            key = (layer, i, tuple(p.shape))
            if key not in _BLOBS:
                _BLOBS[key] = random_blob(*key)
            blobs.append(_BLOBS[key])
        layers[layer] = (net.layer_types[layer], blobs)
    path = write_caffemodel(tmp_path_factory.mktemp("caffe") / f"{name}.caffemodel", layers)
    report = net.load_caffemodel(path, strict=True)
    assert report.missing == [] and report.unused == []
    model, conversion = convert_caffemodel(path, ARCH[name])
    assert not conversion.classifier and sorted(conversion.loaded) == sorted(layers)
    yield Case(name, ARCH[name], net, model.eval(), layers, path)
    path.unlink()
    if name == "voc-fcn8s-atonce":  # the last VGG net
        _BLOBS.clear()


def _check_sizes(case: Case, sizes) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=gen) * 60
            ref, ours = case.net(x), case.model(x)
            assert ref.shape == ours.shape == (1, 21, h, w), (case.name, h, w)
            assert ref.std() > 0, "the reference output must depend on the weights"
            err = relative_error(ours, ref)
            assert err <= RTOL, f"{case.name} {h}x{w}: relative error {err:.2e}"


def test_scores_agree_with_the_reference_net(pair):
    _check_sizes(pair, FAST_SIZES[pair.name])


@pytest.mark.slow
def test_scores_agree_with_the_reference_net_many_sizes(pair):
    _check_sizes(pair, SLOW_SIZES)


@pytest.mark.parametrize("pair", ["voc-fcn-alexnet"], indirect=True)
def test_sensitivity_a_wrong_layout_is_caught(pair):
    """The comparison above would see a transposed deconvolution (guards the test itself)."""
    x = torch.randn(1, 3, 40, 40) * 60
    with torch.no_grad():
        ref = pair.net(x)
        up = pair.model.upscore.weight
        saved = up.clone()
        up.copy_(saved.transpose(2, 3))
        try:
            assert relative_error(pair.model(x), ref) > 1e-2
        finally:
            up.copy_(saved)


def test_round_trip_caffemodel_fcnseg_caffemodel(pair, tmp_path):
    back = model_to_caffe(pair.model)
    assert sorted(back) == sorted(pair.layers)
    for name, (kind, blobs) in pair.layers.items():
        assert back[name][0] == kind
        assert [b.shape for b in back[name][1]] == [b.shape for b in blobs]
        assert all(np.array_equal(u, v) for u, v in zip(back[name][1], blobs)), name
    if pair.name in ("voc-fcn-alexnet", "voc-fcn8s-atonce"):  # and through a file (Scale included)
        again = read_caffemodel(export_caffemodel(pair.model, tmp_path / "back.caffemodel"))
        original = read_caffemodel(pair.path)
        again_by_name = {layer.name: layer for layer in again}
        assert sorted(again_by_name) == sorted(layer.name for layer in original)
        for lb in original:
            la = again_by_name[lb.name]
            assert la.type == lb.type and len(la.blobs) == len(lb.blobs)
            assert all(np.array_equal(a.data, b.data) and a.shape == b.shape for a, b in zip(la.blobs, lb.blobs))


@pytest.mark.parametrize("pair", ["voc-fcn-alexnet"], indirect=True)
def test_cli_convert_writes_a_self_describing_weights_file(pair, tmp_path, capsys):
    out = tmp_path / "alexnet.safetensors"
    assert main(["convert", str(pair.path), "--arch", "fcn32s_alexnet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FCN caffemodel -> fcn32s_alexnet (21 classes)" in printed and "loaded 9 layers" in printed
    state, meta = load_weights(out)
    assert meta["model"] == "fcn32s_alexnet" and meta["num_classes"] == 21
    assert meta["normalization"] == "caffe" and meta["provenance"]["preprocessing"]["channel_order"] == "BGR"
    assert meta["provenance"]["preprocessing"]["mean"] == pytest.approx([104.00699, 116.66877, 122.67892])
    np.testing.assert_array_equal(state["backbone.features.4.weight"].numpy(), pair.layers["conv2"][1][0])
    np.testing.assert_array_equal(state["upscore.weight"].numpy(), pair.layers["upscore"][1][0])
    assert main(["convert", str(pair.path), "--list"]) == 0
    assert "conv2\tConvolution\t256x48x5x5, 256" in capsys.readouterr().out
    # a net whose 3-channel input is HHA (NYUD) says so in its card: eval/predict feed it the HHA image
    hha = tmp_path / "hha.safetensors"
    assert main(["convert", str(pair.path), "--arch", "fcn32s_alexnet", "--out", str(hha), "--input-key", "hha"]) == 0
    meta = load_weights(hha)[1]
    assert meta["input_key"] == "hha" and meta["inputs"][0]["key"] == "hha"


@pytest.mark.parametrize("pair", ["voc-fcn-alexnet"], indirect=True)
def test_cli_rejects_blobs_that_do_not_fit(pair, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    code = main(["convert", str(pair.path), "--arch", "fcn32s_alexnet", "--num-classes", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "layer 'score_fr': blob 0 (weight) has shape 21x4096x1x1, fcn32s_alexnet score_fr.weight expects " \
           "5x4096x1x1" in err
    assert "layer 'upscore'" in err and "(the caffemodel has 21 classes)" in err
    assert err.count("\n") == 1  # one line, no traceback
    code = main(["convert", str(pair.path), "--arch", "fcn32s_vgg16", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "caffemodel layer 'conv1'" in err and "missing from the caffemodel: conv1_1" in err


@pytest.mark.parametrize("pair", ["voc-fcn-alexnet"], indirect=True)
def test_cli_verify_against_the_reference_prototxt(pair, shared_dir, tmp_path, capsys):
    val = shared_dir / REF / "voc-fcn-alexnet" / "val.prototxt"
    out = tmp_path / "v.safetensors"
    args = ["convert", str(pair.path), "--arch", "fcn32s_alexnet", "--out", str(out), "--verify"]
    assert main(args + [str(val)]) == 0
    assert "verified against the prototxt: relative score difference 0.00e+00" in capsys.readouterr().out
    assert load_weights(out)[1]["provenance"]["source"]["verified_against"] == "val.prototxt"
    out.unlink()
    text = val.read_text()
    shifted = tmp_path / "shifted.prototxt"  # a net that is not the model: the final crop moved by one
    shifted.write_text(text.replace("offset: 18", "offset: 19"))
    assert main(args + [str(shifted)]) == 2
    assert "differs from" in capsys.readouterr().err and not out.exists()
    unsupported = tmp_path / "unsupported.prototxt"
    unsupported.write_text(text.replace('name: "norm1"\n  type: "LRN"', 'name: "norm1"\n  type: "BatchNorm"'))
    assert main(args + [str(unsupported)]) == 2
    assert "layer 'norm1' has unsupported type 'BatchNorm'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad files
def _small_alexnet_like(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_caffemodel(path, {
        "conv1": ("Convolution", [rng.standard_normal((96, 4, 11, 11), dtype=np.float32),
                                  np.zeros(96, np.float32)]),
        "extra": ("Convolution", [np.zeros((2, 2, 1, 1), np.float32)]),
        "upscore": ("Deconvolution", [np.zeros((21, 21, 63, 63), np.float32), np.zeros(21, np.float32)]),
    })


def test_every_mismatch_is_reported_by_layer_name(tmp_path):
    path = _small_alexnet_like(tmp_path / "bad.caffemodel")
    with pytest.raises(UserError) as exc:
        convert_caffemodel(path, "fcn32s_alexnet")
    msg = str(exc.value)
    assert "layer 'conv1': blob 0 (weight) has shape 96x4x11x11, fcn32s_alexnet backbone.features.0.weight " \
           "expects 96x3x11x11" in msg
    assert "caffemodel layer 'extra' (Convolution, blobs 2x2x1x1) has no counterpart in fcn32s_alexnet" in msg
    assert "layer 'upscore' has 2 blob(s), fcn32s_alexnet upscore has 1 (weight)" in msg
    assert "fcn32s_alexnet layers missing from the caffemodel: conv2, conv3, conv4, conv5, fc6, fc7, score_fr" in msg


@pytest.mark.parametrize("kind", ["truncated", "text", "png", "empty"])
def test_cli_bad_files_exit_2(tmp_path, capsys, kind):
    path = tmp_path / "bad.caffemodel"
    if kind == "truncated":
        data = _small_alexnet_like(tmp_path / "ok.caffemodel").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text('layer { name: "conv1" type: "Convolution" }\n')
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    else:
        path.write_bytes(b"")
    code = main(["convert", str(path), "--arch", "fcn32s_alexnet", "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and err.count("\n") == 1
    expected = {"truncated": "truncated", "text": "looks like a text file", "png": "not a caffemodel",
                "empty": "empty file"}[kind]
    assert expected in err


def test_cli_usage_errors(tmp_path, capsys):
    path = _small_alexnet_like(tmp_path / "m.caffemodel")
    assert main(["convert", str(path), "--arch", "no_such_model", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["convert", str(path)]) == 2
    assert "--model and --out are required" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.caffemodel"), "--arch", "fcn32s_alexnet",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such caffemodel" in capsys.readouterr().err


# ---------------------------------------------------------------------------- classifiers
CAFFENET = """
name: "CaffeNet"
input: "data" input_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm1" type: LRN bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layers { name: "conv2" type: CONVOLUTION bottom: "norm1" top: "conv2"
         convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layers { name: "relu2" type: RELU bottom: "conv2" top: "conv2" }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "norm2" type: LRN bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layers { name: "conv3" type: CONVOLUTION bottom: "norm2" top: "conv3" convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layers { name: "relu3" type: RELU bottom: "conv3" top: "conv3" }
layers { name: "conv4" type: CONVOLUTION bottom: "conv3" top: "conv4"
         convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layers { name: "relu4" type: RELU bottom: "conv4" top: "conv4" }
layers { name: "conv5" type: CONVOLUTION bottom: "conv4" top: "conv5"
         convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layers { name: "relu5" type: RELU bottom: "conv5" top: "conv5" }
layers { name: "pool5" type: POOLING bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "fc6" type: INNER_PRODUCT bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layers { name: "relu6" type: RELU bottom: "fc6" top: "fc6" }
layers { name: "drop6" type: DROPOUT bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layers { name: "fc7" type: INNER_PRODUCT bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layers { name: "relu7" type: RELU bottom: "fc7" top: "fc7" }
layers { name: "drop7" type: DROPOUT bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layers { name: "fc8" type: INNER_PRODUCT bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layers { name: "prob" type: SOFTMAX bottom: "fc8" top: "prob" }
"""
FC_HEAD = """
layer { name: "in" type: "Input" top: "pool5" input_param { shape { dim: 2 dim: %d dim: %d dim: %d } } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
"""


def _classifier_case(tmp_path: Path, prototxt: str, size: int) -> tuple[Path, dict]:
    net = Net(parse_prototxt(prototxt)).eval()
    with torch.no_grad():
        probs = net(torch.randn(1, 3, size, size))  # sizes the InnerProduct weights
    assert probs.shape == (1, 1000)
    layers = {name: (net.layer_types[name], [random_blob(name, i, tuple(p.shape)) for i, p in enumerate(ps)])
              for name, ps in net.params.items()}
    # written as old ILSVRC caffemodels are: V1 'layers', 4-D legacy blob dimensions
    return write_caffemodel(tmp_path / "classifier.caffemodel", layers, legacy=True), layers


def _check_classifier(path: Path, layers: dict, arch: str, conv_map: dict[str, str], pool5: tuple[int, int, int]):
    model, report = convert_caffemodel(path, arch)
    c, h, w = pool5
    assert report.classifier and report.dropped == ["fc8"] and report.kept_init == ["score_fr", "upscore"]
    assert report.convolutionalized == [f"fc6: 4096x{c * h * w} -> 4096x{c}x{h}x{w}",
                                        "fc7: 4096x4096 -> 4096x4096x1x1"]
    for caffe_name, path_ in conv_map.items():
        module = dict(model.named_modules())[path_]
        np.testing.assert_array_equal(module.weight.detach().numpy(), layers[caffe_name][1][0])
        np.testing.assert_array_equal(module.bias.detach().numpy(), layers[caffe_name][1][1])
    assert torch.count_nonzero(model.score_fr.weight) == 0 and torch.count_nonzero(model.score_fr.bias) == 0
    assert torch.equal(model.upscore.weight[3, 3], bilinear_kernel(model.upscore.weight.shape[-1]))
    # fc6/fc7 as convolutions compute what the classifier's InnerProducts compute
    head = Net(parse_prototxt(FC_HEAD % pool5), path).eval()
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        ref = head(x)
        ours = model.backbone.fc7(torch.relu(model.backbone.fc6(x)))
    assert ours.shape == (2, 4096, 1, 1)
    assert relative_error(ours.flatten(1), ref) <= RTOL
    return model, report


def test_caffenet_classifier_is_convolutionalized(tmp_path):
    path, layers = _classifier_case(tmp_path, CAFFENET, 227)
    conv_map = {"conv1": "backbone.features.0", "conv2": "backbone.features.4", "conv5": "backbone.features.12"}
    model, report = _check_classifier(path, layers, "fcn32s_alexnet", conv_map, (256, 6, 6))
    meta = json.loads(json.dumps(conversion_card(model, report).to_meta()))
    assert meta["provenance"]["source"]["kind"] == "classifier" and meta["provenance"]["source"]["dropped"] == ["fc8"]
    assert meta["normalization"] == "caffe" and meta["num_classes"] == 21


def _vgg16_classifier_prototxt() -> str:
    lines = ['input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224']
    bottom = "data"
    for b, (n, ch) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            lines.append(f'layers {{ name: "{name}" type: CONVOLUTION bottom: "{bottom}" top: "{name}" '
                         f'convolution_param {{ num_output: {ch} pad: 1 kernel_size: 3 }} }}')
            lines.append(f'layers {{ name: "relu{b}_{i}" type: RELU bottom: "{name}" top: "{name}" }}')
            bottom = name
        lines.append(f'layers {{ name: "pool{b}" type: POOLING bottom: "{bottom}" top: "pool{b}" '
                     f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}')
        bottom = f"pool{b}"
    lines.append(CAFFENET[CAFFENET.index('layers { name: "fc6"'):])
    return "\n".join(lines)


@pytest.mark.slow
def test_vgg16_ilsvrc_classifier_is_convolutionalized(tmp_path):
    path, layers = _classifier_case(tmp_path, _vgg16_classifier_prototxt(), 224)
    conv_map = {"conv1_1": "backbone.features.0", "conv3_3": "backbone.features.14",
                "conv5_3": "backbone.features.28"}
    _check_classifier(path, layers, "fcn32s_vgg16", conv_map, (512, 7, 7))


OTHER_NETS = [
    ("pascalcontext-fcn32s/val", "fcn32s_vgg16_context", {}), ("pascalcontext-fcn16s/val", "fcn16s_vgg16_context", {}),
    ("pascalcontext-fcn8s/val", "fcn8s_vgg16_context", {}), ("nyud-fcn32s-color/test", "fcn32s_vgg16", {}),
    ("nyud-fcn32s-hha/test", "fcn32s_vgg16", {}), ("nyud-fcn32s-color-d/test", "fcn32s_vgg16_rgbd", {"depth": 1}),
    ("nyud-fcn32s-color-hha/test", "fcn32s_vgg16_rgb_hha", {}),
    ("siftflow-fcn32s/test", "fcn32s_vgg16_siftflow", {}), ("siftflow-fcn16s/test", "fcn16s_vgg16_siftflow", {}),
    ("siftflow-fcn8s/test", "fcn8s_vgg16_siftflow", {})]


@pytest.mark.slow
@pytest.mark.parametrize("proto, arch, channels", OTHER_NETS, ids=[n[0].split("/")[0] for n in OTHER_NETS])
def test_every_other_reference_net_converts(shared_dir, proto, arch, channels):
    """Convert a caffemodel laid out as each reference net's (constant blobs, shapes only)."""
    with torch.device("meta"):
        net = Net(shared_dir / REF / f"{proto}.prototxt", input_channels=channels)
    from fcnseg.caffe.caffemodel import Blob, CaffeLayer

    layers = [CaffeLayer(name, net.layer_types[name],
                         [Blob(np.broadcast_to(np.float32(0.5), tuple(p.shape))) for p in params])
              for name, params in net.params.items()]
    model, report = convert_caffemodel(layers, arch)
    assert sorted(report.loaded) == sorted(net.params) and not report.classifier
    assert all(bool((t == 0.5).all()) for t in model.state_dict().values())
