"""Layer-by-layer comparison of fcnseg's models with the reference prototxts (issue 3).

The Caffe blob shapes are derived here from the prototxt's own layer parameters
(independently of :class:`fcnseg.caffe.Net`): Convolution ``(num_output, C_in / group,
k, k)`` + bias ``(num_output,)`` unless ``bias_term: false``; Deconvolution ``(C_in,
num_output / group, k, k)``; Scale ``(C,)``. Models are built on the meta device, so
this costs no memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fcnseg.caffe.prototxt import net_layers, read_prototxt
from fcnseg.models import get_model

REF = "reference/fcn-berkeleyvision"
VOC = [("voc-fcn32s", "fcn32s_vgg16", {"score": 19}),
       ("voc-fcn16s", "fcn16s_vgg16", {"score_pool4c": 5, "score": 27}),
       ("voc-fcn8s", "fcn8s_vgg16", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
       ("voc-fcn8s-atonce", "fcn8s_atonce_vgg16", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
       ("voc-fcn-alexnet", "fcn32s_alexnet", {"score": 18})]
# every reference net and the fcnseg model it converts into (some are added by other issues)
ALL = [("voc-fcn32s/val", "fcn32s_vgg16"), ("voc-fcn16s/val", "fcn16s_vgg16"), ("voc-fcn8s/val", "fcn8s_vgg16"),
       ("voc-fcn8s/deploy", "fcn8s_vgg16"), ("voc-fcn8s-atonce/val", "fcn8s_atonce_vgg16"),
       ("voc-fcn-alexnet/val", "fcn32s_alexnet"), ("pascalcontext-fcn32s/val", "fcn32s_vgg16_context"),
       ("pascalcontext-fcn16s/val", "fcn16s_vgg16_context"), ("pascalcontext-fcn8s/val", "fcn8s_vgg16_context"),
       ("nyud-fcn32s-color/test", "fcn32s_vgg16"), ("nyud-fcn32s-hha/test", "fcn32s_vgg16"),
       ("nyud-fcn32s-color-d/test", "fcn32s_vgg16_rgbd"), ("nyud-fcn32s-color-hha/test", "fcn32s_vgg16_rgb_hha"),
       ("siftflow-fcn32s/test", "fcn32s_vgg16_siftflow"), ("siftflow-fcn16s/test", "fcn16s_vgg16_siftflow"),
       ("siftflow-fcn8s/test", "fcn8s_vgg16_siftflow")]
INPUT_CHANNELS = {"depth": 1}  # every other data top (data, color, hha) is a 3-channel image


@dataclass
class CaffeParamLayer:
    type: str
    shapes: list[tuple[int, ...]]
    kernel: int
    stride: int
    pad: int
    group: int
    dilation: int


def _one(value, default: int) -> int:
    if value is None:
        return default
    values = value if isinstance(value, list) else [value]
    assert len(values) == 1, "the reference nets use square kernels"
    return int(values[0])


def derive(net: dict) -> tuple[dict[str, CaffeParamLayer], dict[str, int], int]:
    """Parameterised layers with their blob shapes, the Crop offsets, and the class count."""
    channels: dict[str, int] = {}
    layers: dict[str, CaffeParamLayer] = {}
    crops: dict[str, int] = {}
    num_classes = 0
    for layer in net_layers(net):
        kind, name = layer["type"], layer["name"]
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        if kind in ("Python", "Input"):
            for top in tops:
                channels[top] = INPUT_CHANNELS.get(top, 3)
        elif kind in ("Convolution", "Deconvolution"):
            p = layer["convolution_param"]
            out, group, cin = int(p["num_output"]), int(p.get("group", 1)), channels[bottoms[0]]
            k = _one(p.get("kernel_size"), 0)
            weight = (out, cin // group, k, k) if kind == "Convolution" else (cin, out // group, k, k)
            shapes = [weight] + ([(out,)] if p.get("bias_term", True) else [])
            layers[name] = CaffeParamLayer(kind, shapes, k, _one(p.get("stride"), 1), _one(p.get("pad"), 0),
                                           group, _one(p.get("dilation"), 1))
            channels[tops[0]] = out
            if name.startswith("score_fr"):
                num_classes = num_classes or out
        elif kind == "Scale":
            layers[name] = CaffeParamLayer(kind, [(channels[bottoms[0]],)], 0, 0, 0, 0, 0)
            channels[tops[0]] = channels[bottoms[0]]
        elif kind == "Concat":
            channels[tops[0]] = sum(channels[b] for b in bottoms)
        elif kind == "Crop":
            crops[name] = int(layer["crop_param"]["offset"][0])
            channels[tops[0]] = channels[bottoms[0]]
        elif kind in ("Pooling", "ReLU", "Dropout", "LRN", "Eltwise"):
            channels[tops[0]] = channels[bottoms[0]]
        else:
            assert kind == "SoftmaxWithLoss", kind
    return layers, crops, num_classes


def _module_params(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in (getattr(module, "weight", None), getattr(module, "bias", None)) if t is not None]


def _build(arch: str, num_classes: int | None) -> nn.Module:
    with torch.device("meta"):
        return get_model(arch, num_classes)


def _compare(shared_dir, proto: str, arch: str) -> tuple[nn.Module, dict[str, int]]:
    layers, crops, num_classes = derive(read_prototxt(shared_dir / REF / f"{proto}.prototxt"))
    model = _build(arch, num_classes)
    mapping = model.caffe_layer_names()
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in mapping]
    assert not missing, f"{arch} lacks reference layers {missing}"
    extra = [name for name, path in mapping.items() if name not in layers and _module_params(modules[path])]
    assert not extra, f"{arch} has parameterised layers that {proto} lacks: {extra}"
    expected_type = {"Convolution": nn.Conv2d, "Deconvolution": nn.ConvTranspose2d}
    for name, ref in layers.items():
        module = modules[mapping[name]]
        got = [tuple(t.shape) for t in _module_params(module)]
        assert got == ref.shapes, f"{arch} {name}: {got} != reference {ref.shapes}"
        if ref.type in expected_type:
            assert type(module) is expected_type[ref.type] or isinstance(module, expected_type[ref.type]), name
            assert not isinstance(module, nn.ConvTranspose2d) or ref.type == "Deconvolution", name
            geometry = (module.kernel_size, module.stride, module.padding, module.groups, module.dilation)
            assert geometry == ((ref.kernel,) * 2, (ref.stride,) * 2, (ref.pad,) * 2, ref.group,
                                (ref.dilation,) * 2), f"{arch} {name}: geometry {geometry}"
    reference_count = sum(int(torch.Size(s).numel()) for ref in layers.values() for s in ref.shapes)
    assert sum(p.numel() for p in model.parameters()) == reference_count
    return model, crops


@pytest.mark.parametrize("proto, arch, offsets", VOC, ids=[v[0] for v in VOC])
def test_voc_reference_layers_shapes_counts_and_crops(shared_dir, proto, arch, offsets):
    model, crops = _compare(shared_dir, f"{proto}/val", arch)
    assert crops == offsets  # the prototxt says what the issue says
    assert model.crop_offsets == crops  # and fcnseg derives the same offsets from geometry


def test_reference_parameter_counts_match_the_paper(shared_dir):
    """The paper's 134M (VGG16) and 57M (AlexNet) leave out the fixed bilinear deconvolutions."""
    counts = {}
    for proto, arch, _ in VOC:
        layers, _, _ = derive(read_prototxt(shared_dir / REF / proto / "val.prototxt"))
        counts[proto] = sum(int(torch.Size(s).numel()) for ref in layers.values() for s in ref.shapes
                            if ref.type != "Deconvolution")
    assert round(counts["voc-fcn32s"] / 1e6) == 134 and round(counts["voc-fcn-alexnet"] / 1e6) == 57


@pytest.mark.parametrize("proto, arch", ALL, ids=[a[0] for a in ALL])
def test_every_reference_net_maps_onto_its_model(shared_dir, proto, arch):
    model, crops = _compare(shared_dir, proto, arch)
    offsets = getattr(model, "crop_offsets", None)
    assert isinstance(offsets, dict) and offsets, proto
    for name, offset in offsets.items():  # a two-head net's "score" crop is the reference's score_sem and score_geo
        ref = [c for c in crops if c.replace("_sem", "").replace("_geo", "") == name]
        assert ref and all(crops[c] == offset for c in ref), (proto, name, offset, crops)
