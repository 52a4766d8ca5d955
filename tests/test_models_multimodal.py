"""NYUDv2 (RGB-D, RGB + HHA), SIFT Flow (two heads) and PASCAL-Context models.

Layer names and shapes are checked against the reference prototxts on the meta
device (no memory, no time). The VGG16 nets run for real only at small sizes
(1x1 and one odd size), with frozen, memoised trunks in the SGD checks: each
VGG16 forward costs ~1.5 s here. The Lite0 forms, which share the classes, run
everything (all sizes, all layers trained).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import SHARED  # noqa: E402
from fcnseg import surgery
from fcnseg.caffe.prototxt import net_layers, read_prototxt
from fcnseg.errors import UserError
from fcnseg.models import get_model, list_models
from fcnseg.models.lite0 import Lite0Trunk
from fcnseg.models.multimodal import EarlyFusionFCN, LateFusionFCN
from fcnseg.models.multitask import MultiTaskFCN, multitask_loss
from fcnseg.models.vgg import VGG16Trunk

REF = SHARED / "reference" / "fcn-berkeleyvision"
# channels of the data layers' tops in the reference nets
DATA_CHANNELS = {"data": 3, "color": 3, "hha": 3, "depth": 1}

NEW_MODELS = {
    "fcn32s_vgg16_rgbd": 40, "fcn16s_vgg16_rgbd": 40, "fcn32s_vgg16_rgb_hha": 40, "fcn16s_vgg16_rgb_hha": 40,
    "fcn32s_vgg16_siftflow": 33, "fcn16s_vgg16_siftflow": 33, "fcn8s_vgg16_siftflow": 33,
    "fcn32s_vgg16_context": 60, "fcn16s_vgg16_context": 60, "fcn8s_vgg16_context": 60,
    "fcn8s_lite0_rgbd": 40, "fcn8s_lite0_rgb_hha": 40, "fcn8s_lite0_multitask": 33,
}


# --------------------------------------------------------------------------- reference layers
def reference_params(path: Path) -> dict[str, dict]:
    """Parameterised layers of a reference net: weight/bias shapes, stride, pad, group, fixed.

    Blob channels are propagated from the data layers through the graph, so
    input-channel counts (e.g. 4 for conv1_1_bgrd) are derived, not typed in.
    """
    channels: dict[str, int] = {}
    out: dict[str, dict] = {}
    for layer in net_layers(read_prototxt(path)):
        kind, bottoms, tops = layer["type"], layer.get("bottom", []), layer.get("top", [])
        if kind == "Python":
            channels.update({t: DATA_CHANNELS[t] for t in tops if t in DATA_CHANNELS})
        elif kind in ("Convolution", "Deconvolution"):
            p = layer["convolution_param"]
            n, cin, group = p["num_output"], channels[bottoms[0]], p.get("group", 1)
            k = p["kernel_size"][0]
            weight = (n, cin // group, k, k) if kind == "Convolution" else (cin, n // group, k, k)
            out[layer["name"]] = {
                "weight": weight, "bias": (n,) if p.get("bias_term", True) else None,
                "stride": (p.get("stride") or [1])[0], "pad": (p.get("pad") or [0])[0], "group": group,
                "fixed": any(q.get("lr_mult", 1) == 0 for q in layer.get("param", [])),
            }
            channels[tops[0]] = n
        elif kind == "Concat":
            channels[tops[0]] = sum(channels[b] for b in bottoms)
        elif bottoms and bottoms[0] in channels:
            for t in tops:
                channels[t] = channels[bottoms[0]]
    return out


def model_params(model: nn.Module) -> dict[str, dict]:
    """The same facts read from a model through its ``caffe_layer_names()``."""
    out = {}
    for caffe, path in model.caffe_layer_names().items():
        m = model.get_submodule(path)
        out[caffe] = {
            "weight": tuple(m.weight.shape), "bias": None if m.bias is None else tuple(m.bias.shape),
            "stride": m.stride[0], "pad": m.padding[0], "group": m.groups, "fixed": not m.weight.requires_grad,
        }
    return out


def _meta(name: str, num_classes: int | None = None) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, num_classes)


@pytest.mark.parametrize("name, num_classes, prototxt", [
    ("fcn32s_vgg16_rgbd", None, "nyud-fcn32s-color-d/trainval.prototxt"),
    ("fcn32s_vgg16_rgb_hha", None, "nyud-fcn32s-color-hha/trainval.prototxt"),
    ("fcn32s_vgg16", 40, "nyud-fcn32s-color/trainval.prototxt"),
    ("fcn32s_vgg16", 40, "nyud-fcn32s-hha/trainval.prototxt"),  # HHA alone: the plain net
    ("fcn32s_vgg16_siftflow", None, "siftflow-fcn32s/trainval.prototxt"),
    ("fcn16s_vgg16_siftflow", None, "siftflow-fcn16s/trainval.prototxt"),
    ("fcn8s_vgg16_siftflow", None, "siftflow-fcn8s/trainval.prototxt"),
    ("fcn32s_vgg16_context", None, "pascalcontext-fcn32s/train.prototxt"),
    ("fcn16s_vgg16_context", None, "pascalcontext-fcn16s/train.prototxt"),
    ("fcn8s_vgg16_context", None, "pascalcontext-fcn8s/train.prototxt"),
])
def test_matches_reference_prototxt(name, num_classes, prototxt):
    ref = reference_params(REF / prototxt)
    model = _meta(name, num_classes)
    got = model_params(model)
    assert sorted(got) == sorted(ref)
    for layer, spec in ref.items():
        assert got[layer] == spec, layer
    n_ref = sum(math.prod(s["weight"]) + (math.prod(s["bias"]) if s["bias"] else 0) for s in ref.values())
    assert sum(p.numel() for p in model.parameters()) == n_ref


@pytest.mark.parametrize("fusion, new_layers", [
    ("rgbd", {"upscore2", "upscore16", "score_pool4"}),
    ("rgb_hha", {"upscore2", "upscore16", "score_pool4color", "score_pool4hha"}),
])
def test_16s_forms_extend_the_32s_reference(fusion, new_layers):
    """No reference prototxt exists for the NYUD 16s nets: they are the 32s ones with
    the pool4 skip (per stream for late fusion) and the 16s upsampling."""
    p32 = model_params(_meta(f"fcn32s_vgg16_{fusion}"))
    p16 = model_params(_meta(f"fcn16s_vgg16_{fusion}"))
    assert set(p16) == set(p32) - {"upscore"} | new_layers
    assert all(p16[k] == p32[k] for k in p32 if k != "upscore")
    voc16 = model_params(_meta("fcn16s_vgg16", 40))
    for layer in new_layers:
        assert p16[layer] == voc16[layer.removesuffix("color").removesuffix("hha")]


def test_new_models_are_registered_with_their_class_counts():
    assert set(NEW_MODELS) <= set(list_models())
    for name, classes in NEW_MODELS.items():
        assert _meta(name).num_classes == classes, name
    heads = _meta("fcn8s_vgg16_siftflow").head_classes
    assert heads == {"sem": 33, "geo": 3}
    with torch.device("meta"):
        custom = get_model("fcn8s_lite0_multitask", 12, aux_classes="depth:8,normal:3", main_head="seg")
    assert custom.head_classes == {"seg": 12, "depth": 8, "normal": 3} and custom.num_classes == 12
    with pytest.raises(UserError, match="name:classes"):
        get_model("fcn8s_lite0_multitask", aux_classes="geo=3")


# --------------------------------------------------------------------------- real VGG16 nets
def _randomize_scores_(model: nn.Module, seed: int = 0) -> None:
    """Score layers start at zero; random ones make the outputs depend on the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.rpartition(".")[2].startswith("score_") and isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)


def _memoize_trunks(model: nn.Module) -> None:
    """Freeze the model's trunks and cache their outputs per input (test speed-up).

    A frozen trunk in eval mode computes the same features for the same input, so
    caching them changes nothing the heads see; it saves ~1.5 s per VGG16 forward.
    """
    for trunk in [m for m in model.modules() if isinstance(m, (VGG16Trunk, Lite0Trunk))]:
        trunk.requires_grad_(False)
        seen: list = []
        run = trunk.forward

        def forward(x, run=run, seen=seen):
            for key, value in seen:
                if key.shape == x.shape and torch.equal(key, x):
                    return value
            seen.append((x.clone(), run(x)))
            return seen[-1][1]

        trunk.forward = forward


def _blocky(batch: int, size: tuple[int, int], classes: int) -> torch.Tensor:
    """A learnable label map: two classes, left and right halves (per-pixel noise is not)."""
    target = torch.full((batch, *size), classes - 1, dtype=torch.long)
    target[..., : size[1] // 2] = 0
    return target


def _shape_checked(loss_fn, size):
    """Wrap a loss so that every training forward also checks the output size."""
    def wrapped(out, target):
        for y in (out.values() if isinstance(out, dict) else [out]):
            assert y.shape[2:] == size
        return loss_fn(out, target)
    return wrapped


def _sgd_losses(model: nn.Module, x, target, loss_fn, steps: int = 8, lr: float = 0.1) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


ODD = (23, 17)


@pytest.fixture(scope="module")
def rgbd16():
    torch.manual_seed(0)
    return get_model("fcn16s_vgg16_rgbd").eval()


def test_rgbd_depth_filters_are_the_mean_of_rgb(rgbd16):
    conv1 = rgbd16.backbone.features[0]
    assert conv1.weight.shape == (64, 4, 3, 3) and conv1.padding == (100, 100)
    torch.testing.assert_close(conv1.weight[:, 3], conv1.weight[:, :3].mean(1))
    assert isinstance(rgbd16, EarlyFusionFCN) and rgbd16.modalities == {"rgb": 3, "depth": 1}


def test_rgbd_vgg_any_size_and_trains(rgbd16):
    with torch.no_grad():
        assert rgbd16(torch.randn(1, 4, 1, 1)).shape == (1, 40, 1, 1)
    _memoize_trunks(rgbd16)
    x = {"rgb": torch.randn(1, 3, *ODD) * 50, "depth": torch.rand(1, 1, *ODD) * 100}
    losses = _sgd_losses(rgbd16, x, _blocky(1, ODD, 40), _shape_checked(F.cross_entropy, ODD))
    assert losses[0] == pytest.approx(math.log(40), rel=1e-5)  # zero score layers: uniform
    assert losses[-1] < 0.9 * losses[0], losses


def test_rgb_hha_vgg_any_size_and_trains():
    torch.manual_seed(0)
    model = get_model("fcn32s_vgg16_rgb_hha").eval()
    assert isinstance(model, LateFusionFCN) and model.modalities == {"rgb": 3, "hha": 3}
    assert model.fusion_weights == {"rgb": 0.5, "hha": 0.5} and model.crop_offsets == {"score": 19}
    _memoize_trunks(model)  # (two VGG16 streams: one odd size only, 1x1 runs on the Lite0 form)
    x = {"rgb": torch.randn(1, 3, *ODD) * 50, "hha": torch.randn(1, 3, *ODD) * 50}
    # each stream's scores count 0.5 (gradient x0.5, effect x0.5): 4x the single-net rate
    losses = _sgd_losses(model, x, _blocky(1, ODD, 40), _shape_checked(F.cross_entropy, ODD), lr=0.4)
    assert losses[-1] < 0.9 * losses[0], losses


def test_siftflow_vgg_two_heads_any_size_and_trains():
    torch.manual_seed(0)
    model = get_model("fcn8s_vgg16_siftflow").eval()
    assert isinstance(model, MultiTaskFCN) and model.crop_offsets == {"score_pool4c": 5, "score_pool3c": 9,
                                                                      "score": 31}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1, 1))
    assert out["sem"].shape == (1, 33, 1, 1) and out["geo"].shape == (1, 3, 1, 1)
    _memoize_trunks(model)
    _randomize_scores_(model)
    x = torch.randn(1, 3, *ODD) * 50
    target = {"sem": _blocky(1, ODD, 33), "geo": _blocky(1, ODD, 3)}
    loss_fn = _shape_checked(lambda o, t: multitask_loss(o, t, F.cross_entropy), ODD)
    losses = _sgd_losses(model, x, target, loss_fn)
    assert losses[-1] < 0.9 * losses[0], losses


# --------------------------------------------------------------------------- Lite0 forms
SIZES = [(1, 1), (2, 3), (17, 33), (64, 48), (97, 61)]


def _lite0_forms() -> dict[str, nn.Module]:
    forms = {name: get_model(name) for name in ("fcn8s_lite0_rgbd", "fcn8s_lite0_rgb_hha", "fcn8s_lite0_multitask")}
    trunk = lambda: Lite0Trunk(3)  # noqa: E731
    opts = {"aligned_upsampling": True}
    for v in ("32s", "16s"):
        forms[f"rgbd{v}"] = EarlyFusionFCN(trunk(), 5, v, **opts)
        forms[f"rgb_hha{v}"] = LateFusionFCN({"rgb": trunk(), "hha": trunk()}, 5, v, **opts)
        forms[f"multitask{v}"] = MultiTaskFCN(trunk(), {"a": 4, "b": 2}, v, **opts)
    return forms


def test_lite0_forms_give_input_sized_outputs():
    torch.manual_seed(0)
    for name, model in _lite0_forms().items():
        model.eval()
        channels = sum(getattr(model, "modalities", {"rgb": 3}).values())
        for h, w in SIZES:
            with torch.no_grad():
                out = model(torch.randn(2, channels, h, w))
            outs = out if isinstance(out, dict) else {"": out}
            for head, y in outs.items():
                assert y.shape[0] == 2 and y.shape[2:] == (h, w), (name, head, h, w)


def test_late_fusion_is_the_mean_of_the_single_modality_nets():
    """Transplant two FCN-8s nets into the streams: the fused net averages their outputs
    (fusing before the linear upsampling, as the reference, changes nothing), and a
    dict input equals the channel-concatenated tensor."""
    torch.manual_seed(0)
    single = {m: get_model("fcn8s_lite0", 40).eval() for m in ("rgb", "hha")}
    fused = get_model("fcn8s_lite0_rgb_hha").eval()
    for i, (m, net) in enumerate(single.items()):
        _randomize_scores_(net, seed=i)
        report = surgery.transplant(net, fused, prefix=f"streams.{m}.")
        assert report.shape_mismatch == []
        assert {k for k in fused.state_dict() if k.startswith(f"streams.{m}.")} <= set(report.copied)
    x = {"rgb": torch.randn(1, 3, 45, 37), "hha": torch.randn(1, 3, 45, 37)}
    with torch.no_grad():
        expected = 0.5 * single["rgb"](x["rgb"]) + 0.5 * single["hha"](x["hha"])
        got = fused(x)
        stacked = fused(torch.cat([x["rgb"], x["hha"]], 1))
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stacked, got, rtol=0, atol=0)
    assert not any("upscore" in k for k in fused.state_dict() if k.startswith("streams.hha."))
    with pytest.raises(ValueError, match="6 input channels"):
        fused(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="hha"):
        fused({"rgb": x["rgb"]})


def test_early_fusion_dict_equals_tensor():
    torch.manual_seed(0)
    model = get_model("fcn8s_lite0_rgbd").eval()
    _randomize_scores_(model)
    x = {"rgb": torch.randn(1, 3, 30, 41), "depth": torch.randn(1, 1, 30, 41)}
    with torch.no_grad():
        assert torch.equal(model(x), model(torch.cat([x["rgb"], x["depth"]], 1)))
    stem = model.backbone._conv_stem
    torch.testing.assert_close(stem.weight[:, 3], stem.weight[:, :3].mean(1))


@pytest.mark.parametrize("name", ["fcn8s_lite0_rgbd", "fcn8s_lite0_rgb_hha", "fcn8s_lite0_multitask"])
def test_lite0_forms_train(name):
    """All layers trained (batch norm in train mode): the loss on a fixed batch falls."""
    torch.manual_seed(0)
    model = get_model(name).train()
    channels = sum(getattr(model, "modalities", {"rgb": 3}).values())
    x = torch.randn(2, channels, 48, 40)
    if isinstance(model, MultiTaskFCN):
        target = {h: _blocky(2, (48, 40), n) for h, n in model.head_classes.items()}
        loss_fn = lambda o, t: multitask_loss(o, t, F.cross_entropy)  # noqa: E731
    else:
        target, loss_fn = _blocky(2, (48, 40), model.num_classes), F.cross_entropy
    losses = _sgd_losses(model, x, target, _shape_checked(loss_fn, (48, 40)), steps=4, lr=0.05)
    assert losses[-1] < 0.9 * losses[0], losses


def test_multitask_loss_sums_heads_and_checks_keys():
    out = {"sem": torch.randn(2, 5, 4, 4), "geo": torch.randn(2, 3, 4, 4)}
    tgt = {"sem": torch.randint(0, 5, (2, 4, 4)), "geo": torch.randint(0, 3, (2, 4, 4))}
    total = multitask_loss(out, tgt, F.cross_entropy)
    expected = F.cross_entropy(out["sem"], tgt["sem"]) + F.cross_entropy(out["geo"], tgt["geo"])
    torch.testing.assert_close(total, expected)
    weighted = multitask_loss(out, tgt, F.cross_entropy, weights={"geo": 0.0})
    torch.testing.assert_close(weighted, F.cross_entropy(out["sem"], tgt["sem"]))
    with pytest.raises(UserError, match="do not match"):
        multitask_loss(out, {"sem": tgt["sem"]}, F.cross_entropy)


# --------------------------------------------------------------------------- configs
CONFIGS = sorted(p for pattern in ("nyud-*.yaml", "siftflow-*.yaml", "pascalcontext-*.yaml")
                 for p in (Path(__file__).resolve().parents[1] / "configs").glob(pattern))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_reference_configs_load_and_name_real_models(path):
    from fcnseg.training.config import load_config

    cfg = load_config(path)
    with torch.device("meta"):
        model = get_model(cfg.model, cfg.num_classes, **cfg.model_options)
    assert model.num_classes == {"nyud": 40, "siftflow": 33, "pascal-context": 60}[cfg.dataset]
    assert (cfg.optimizer, cfg.momentum, cfg.batch_size, cfg.loss_normalize) == ("sgd", 0.99, 1, False)
    # the reference solvers' rates; the late-fusion nets fine-tune trained streams at 1e-12
    expected = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-12 if cfg.dataset == "siftflow" else 1e-14}[model.variant]
    assert cfg.lr == (1e-12 if "rgb_hha" in cfg.model else expected)
