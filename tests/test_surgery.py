"""Net surgery: convolutionalize, transplant, class count, input channels (fcnseg.surgery)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fcnseg import surgery
from fcnseg.errors import UserError
from fcnseg.models import get_model
from fcnseg.models.alexnet import AlexNetTrunk
from fcnseg.models.layers import Upscore, bilinear_kernel
from fcnseg.models.vgg import VGG16Trunk


# --------------------------------------------------------------------------- convolutionalize
# Narrow look-alikes of the ImageNet classifiers with the real layer layouts (same
# features.N indices, fc6 over a 7x7 / 6x6 pool5 window) but without padding: then a
# classifier's output depends only on its input window, and the convolutionalized
# net's output at grid position (i, j) must equal the classifier on the window that
# starts at (32 i, 32 j) exactly. (The real trunks are 134M/57M parameters and
# padded; their key names and shapes are checked on the meta device below.)
def _vgg_like_features(widths=(4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8)) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin, it = 3, iter(widths)
    for n_convs in (2, 2, 3, 3, 3):
        for _ in range(n_convs):
            cout = next(it)
            layers += [nn.Conv2d(cin, cout, 3), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(*layers)


def _caffenet_like_features() -> nn.Sequential:
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 8, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),  # 0..3
        nn.Conv2d(8, 12, 5, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),  # 4..7
        nn.Conv2d(12, 12, 3), nn.ReLU(),  # 8, 9
        nn.Conv2d(12, 12, 3, groups=2), nn.ReLU(),  # 10, 11
        nn.Conv2d(12, 8, 3, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),  # 12..14
    )


def _he_init_(module: nn.Module) -> nn.Module:
    """He-normal weights, small biases: the input signal survives 13 layers (with the
    default init the outputs are nearly input-independent and the test would be vacuous)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(m.bias, std=0.1)
    return module


class _Classifier(nn.Module):
    """torchvision-style classifier: ``features``, flatten, ``classifier`` (fc6, fc7, fc8)."""

    def __init__(self, features: nn.Sequential, window: int, channels: int, alexnet_style: bool) -> None:
        super().__init__()
        self.features = features
        fc = [nn.Linear(channels * window * window, 24), nn.ReLU(), nn.Dropout(),
              nn.Linear(24, 20), nn.ReLU(), nn.Dropout(), nn.Linear(20, 10)]
        if alexnet_style:  # torchvision AlexNet: Dropout first, Linear at 1, 4, 6
            fc = [nn.Dropout(), fc[0], fc[1], fc[2], fc[3], fc[4], fc[6]]
        self.classifier = nn.Sequential(*fc)

    def fc7(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 pre-activation on one input window."""
        linear = [m for m in self.classifier if isinstance(m, nn.Linear)]
        h = torch.relu(linear[0](self.features(x).flatten(1)))
        return linear[1](h)


class _Trunk(nn.Module):
    """The FCN side: the same features, fc6/fc7 as convolutions, loaded from convolutionalize()."""

    def __init__(self, features: nn.Sequential, window: int, channels: int) -> None:
        super().__init__()
        self.features = features
        self.fc6 = nn.Conv2d(channels, 24, window)
        self.fc7 = nn.Conv2d(24, 20, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc7(torch.relu(self.fc6(self.features(x))))


@pytest.mark.parametrize("arch, make, window, channels, size", [
    # classifier input sizes: the receptive field of one pool5 window (404 VGG16, 355 CaffeNet)
    ("vgg16", _vgg_like_features, 7, 8, 404),
    ("alexnet", _caffenet_like_features, 6, 8, 355),
])
def test_convolutionalize_window_equivalence(arch, make, window, channels, size):
    torch.manual_seed(0)
    clf = _he_init_(_Classifier(make(), window, channels, alexnet_style=arch == "alexnet")).eval()
    state = surgery.convolutionalize(clf.state_dict(), arch, prefix="")
    assert "fc6.weight" in state and not any(k.startswith("classifier") for k in state)
    assert state["fc6.weight"].shape == (24, channels, window, window)
    trunk = _Trunk(make(), window, channels).eval()
    trunk.load_state_dict(state, strict=True)

    x = torch.randn(1, 3, size + 32, size + 64)
    with torch.no_grad():
        dense = trunk(x)
        assert dense.shape[2:] == (2, 3)
        for i, j in [(1, 2), (0, 1)]:
            window_out = clf.fc7(x[:, :, 32 * i:32 * i + size, 32 * j:32 * j + size])
            torch.testing.assert_close(dense[0, :, i, j], window_out[0], rtol=1e-5, atol=1e-5)
        # not vacuous: another window gives other outputs
        other = clf.fc7(x[:, :, 0:size, 0:size])
        assert (dense[0, :, 1, 2] - other[0]).abs().max() > 0.1 * other.abs().max()


def test_convolutionalize_real_vgg16_layout_fits_the_fcn():
    """A torchvision-format VGG16 state dict (shapes only, meta device) loads into fcn32s_vgg16."""
    with torch.device("meta"):
        trunk = VGG16Trunk()
        tv = {k: v for k, v in trunk.state_dict().items() if k.startswith("features.")}
        tv.update({"classifier.0.weight": torch.empty(4096, 25088), "classifier.0.bias": torch.empty(4096),
                   "classifier.3.weight": torch.empty(4096, 4096), "classifier.3.bias": torch.empty(4096),
                   "classifier.6.weight": torch.empty(1000, 4096), "classifier.6.bias": torch.empty(1000)})
        model = get_model("fcn32s_vgg16")
    state = surgery.convolutionalize(tv, "vgg16")
    target = {k: v.shape for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert {k: v.shape for k, v in state.items()} == target
    assert state["backbone.fc6.weight"].shape == (4096, 512, 7, 7)
    assert state["backbone.fc7.weight"].shape == (4096, 4096, 1, 1)


def test_convolutionalize_caffe_named_caffenet_fits_the_alexnet_trunk():
    with torch.device("meta"):
        trunk = AlexNetTrunk()
        caffe = {}
        for name, path in trunk.caffe_names.items():
            mod = trunk.get_submodule(path)
            w = mod.weight if name not in ("fc6", "fc7") else mod.weight.flatten(1)
            caffe[f"{name}.weight"], caffe[f"{name}.bias"] = w, mod.bias
        caffe["fc8.weight"], caffe["fc8.bias"] = torch.empty(1000, 4096), torch.empty(1000)
    state = surgery.convolutionalize(caffe, "alexnet", prefix="")
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in trunk.state_dict().items()}
    assert state["fc6.weight"].shape == (4096, 256, 6, 6)


def test_convolutionalize_rejects_wrong_inputs():
    with pytest.raises(UserError, match="unknown arch"):
        surgery.convolutionalize({}, "resnet50")
    with pytest.raises(UserError, match="missing"):
        surgery.convolutionalize({"foo.weight": torch.zeros(1)}, "vgg16")
    clf = _Classifier(_caffenet_like_features(), 6, 8, alexnet_style=True)
    with pytest.raises(UserError, match="indices"):  # a CaffeNet layout is not a VGG16 one
        surgery.convolutionalize(clf.state_dict(), "vgg16")


def test_bilinear_helpers_are_reexported():
    assert surgery.bilinear_kernel is bilinear_kernel
    k = surgery.bilinear_kernel(4)
    torch.testing.assert_close(k[1], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.75)
    deconv = surgery.bilinear_init_(nn.ConvTranspose2d(3, 3, 4, 2, bias=False))
    assert torch.equal(deconv.weight[1, 1], k) and deconv.weight[0, 1].abs().sum() == 0


# --------------------------------------------------------------------------- transplant
# Small inputs (40x40), few classes, random non-zero score layers; three VGG16 nets
# built once for the module.
SIZE = 40


def _randomize_(conv: nn.Conv2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))


class _Capture:
    """Forward (pre-)hooks that record a layer's input or output."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}
        self.handles = []

    def output(self, module: nn.Module, key: str) -> None:
        self.handles.append(module.register_forward_hook(lambda m, i, o: self.seen.__setitem__(key, o.clone())))

    def input(self, module: nn.Module, key: str) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda m, i: self.seen.__setitem__(key, i[0].clone())))


@pytest.fixture(scope="module")
def staged():
    """FCN-32s (random score_fr) -> 16s, run; 16s gets a random score_pool4 -> 8s, run.

    Two VGG16 forwards in all: the 32s net's own output is its upsampling path applied
    to the score map the 16s net computes with the copied trunk and score_fr.
    """
    torch.manual_seed(0)
    x = torch.randn(1, 3, SIZE, SIZE) * 50
    nets = {v: get_model(f"fcn{v}_vgg16", 5).eval() for v in ("32s", "16s", "8s")}
    _randomize_(nets["32s"].score_fr, 1)
    reports = {"16s": surgery.transplant(nets["32s"], nets["16s"])}
    cap = _Capture()
    cap.output(nets["16s"].score_fr, "16s.score_fr")
    cap.output(nets["16s"].score_pool4, "16s.score_pool4")
    cap.input(nets["16s"].upscore16, "16s.fuse_pool4")
    with torch.no_grad():
        outs = {"16s": nets["16s"](x)}
    _randomize_(nets["16s"].score_pool4, 2)
    reports["8s"] = surgery.transplant(nets["16s"], nets["8s"])
    cap.output(nets["8s"].score_fr, "8s.score_fr")
    cap.output(nets["8s"].score_pool4, "8s.score_pool4")
    cap.output(nets["8s"].score_pool3, "8s.score_pool3")
    cap.input(nets["8s"].upscore_pool4, "8s.fuse_pool4")
    cap.input(nets["8s"].upscore8, "8s.fuse_pool3")
    with torch.no_grad():
        outs["8s"] = nets["8s"](x)
    for h in cap.handles:
        h.remove()
    yield {"nets": nets, "reports": reports, "seen": cap.seen, "outs": outs}


def test_transplant_reports_what_it_copied(staged):
    nets, r16, r8 = staged["nets"], staged["reports"]["16s"], staged["reports"]["8s"]
    backbone = {k for k in nets["32s"].state_dict() if k.startswith("backbone.")}
    assert set(r16.copied) == backbone | {"score_fr.weight", "score_fr.bias"}
    assert set(r16.untouched) == {"score_pool4.weight", "score_pool4.bias", "upscore2.weight", "upscore16.weight"}
    assert r16.shape_mismatch == []
    assert set(r8.copied) == set(r16.copied) | {"score_pool4.weight", "score_pool4.bias", "upscore2.weight"}
    assert set(r8.untouched) == {"score_pool3.weight", "score_pool3.bias", "upscore_pool4.weight", "upscore8.weight"}
    coarse, fine = nets["32s"].state_dict(), nets["8s"].state_dict()
    assert all(torch.equal(coarse[k], fine[k]) for k in r16.copied)
    assert (nets["8s"].score_pool3.weight == 0).all()
    mismatch = surgery.transplant(nets["8s"], get_model("fcn8s_lite0", 5))
    assert not any(k.startswith("backbone.") for k in mismatch.copied)  # other trunk, other names
    assert "score_fr.weight" in mismatch.shape_mismatch  # 4096 vs 1280 inputs: left alone


def test_transplanted_nets_share_scores_exactly(staged):
    """What is exactly true right after transplant: the new zero skip adds exactly nothing."""
    seen, nets = staged["seen"], staged["nets"]
    assert seen["16s.score_fr"].abs().max() > 0 and seen["8s.score_pool4"].abs().max() > 0
    assert (seen["16s.score_pool4"] == 0).all() and (seen["8s.score_pool3"] == 0).all()
    assert torch.equal(seen["8s.score_fr"], seen["16s.score_fr"])
    with torch.no_grad():
        assert torch.equal(seen["16s.fuse_pool4"], nets["16s"].upscore2(seen["16s.score_fr"]))
        # the 16s net's own fusion of the 8s net's (copied) scores is the 8s net's fuse_pool4
        cap = _Capture()
        cap.input(nets["16s"].upscore16, "fuse")
        nets["16s"].upsample_scores({"out": seen["8s.score_fr"], "pool4": seen["8s.score_pool4"]}, SIZE, SIZE)
        cap.handles[0].remove()
        assert torch.equal(seen["8s.fuse_pool4"], cap.seen["fuse"])
        assert torch.equal(seen["8s.fuse_pool3"], nets["8s"].upscore_pool4(seen["8s.fuse_pool4"]))


def _tap_shapes(size: int) -> dict[str, torch.Size]:
    with torch.device("meta"):
        feats = VGG16Trunk()(torch.empty(1, 3, size, size))
    return {k: v.shape[2:] for k, v in feats.items()}


def _upsample(net, size: int, out=None, pool4=None) -> torch.Tensor:
    """The net's own upsampling/fusion/crop path on given tap scores (zeros where not given)."""
    taps = _tap_shapes(size)
    k = net.num_classes
    scores = {"out": out if out is not None else torch.zeros(1, k, *taps["out"])}
    if net.variant != "32s":
        scores["pool4"] = pool4 if pool4 is not None else torch.zeros(1, k, *taps["pool4"])
    if net.variant == "8s":
        scores["pool3"] = torch.zeros(1, k, *taps["pool3"])
    with torch.no_grad():
        return net.upsample_scores(scores, size, size)


def _ramp(shape, k: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(k, 1, 1, generator=g) for _ in range(3))
    i = torch.arange(shape[0], dtype=torch.float32)[:, None]
    j = torch.arange(shape[1], dtype=torch.float32)[None, :]
    return (a + b * i + c * j)[None]


@pytest.mark.parametrize("coarse, fine, tap", [("32s", "16s", "out"), ("16s", "8s", "pool4")])
def test_transplanted_outputs_agree_where_scores_are_affine(staged, coarse, fine, tap):
    """Both nets put each coarse sample at the same pixel: equal outputs for locally affine
    scores (away from the borders); in general they differ (2x-then-16x bilinear is
    smoother than one 32x bilinear)."""
    nets, size = staged["nets"], 96  # a larger virtual input for a wider interior
    shape = _tap_shapes(size)[tap]
    ones = torch.ones(1, 5, *shape)
    a1, b1 = _upsample(nets[coarse], size, **{tap: ones}), _upsample(nets[fine], size, **{tap: ones})
    interior = ((a1 - 1).abs() < 1e-5) & ((b1 - 1).abs() < 1e-5)
    rows = interior[0, 0].any(1).nonzero().flatten()
    assert len(rows) >= 48, "the fully covered interior should span most of a 96x96 output"
    ramp = _ramp(shape)
    a, b = _upsample(nets[coarse], size, **{tap: ramp}), _upsample(nets[fine], size, **{tap: ramp})
    torch.testing.assert_close(a[interior], b[interior], rtol=1e-5, atol=1e-4)
    # a one-pixel misalignment would break the agreement on ramps: the crops matter
    shifted = interior[..., 1:, :]
    assert (a[..., 1:, :][shifted] - b[..., :-1, :][shifted]).abs().max() > 1e-2

    # real outputs right after transplant: not equal in general
    seen, outs = staged["seen"], staged["outs"]
    if coarse == "32s":
        coarse_out = _upsample(nets["32s"], SIZE, out=seen["16s.score_fr"])  # same trunk and score_fr
        fine_out = outs["16s"]
        assert torch.equal(fine_out, _upsample(nets["16s"], SIZE, out=seen["16s.score_fr"]))
    else:
        coarse_out = _upsample(nets["16s"], SIZE, out=seen["8s.score_fr"], pool4=seen["8s.score_pool4"])
        fine_out = outs["8s"]
    assert (coarse_out - fine_out).abs().max() > 1e-3 * coarse_out.abs().max()


# --------------------------------------------------------------------------- classes / channels
def test_change_num_classes_keeps_the_trunk_module_and_state():
    torch.manual_seed(0)
    model = get_model("fcn8s_lite0", 21).eval()
    _randomize_(model.score_fr, 4)
    trunk_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    state = surgery.change_num_classes(model.state_dict(), 7)
    same = surgery.change_num_classes(model, 7)
    assert same is model and model.num_classes == 7
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, trunk_before[k])
    assert model.score_fr.weight.shape == (7, 1280, 1, 1) and (model.score_fr.weight == 0).all()
    assert isinstance(model.upscore8, Upscore) and model.upscore8.edge_pad
    assert not model.upscore8.weight.requires_grad
    fresh = get_model("fcn8s_lite0", 7)
    assert torch.equal(model.upscore8.weight, fresh.upscore8.weight)
    fresh.load_state_dict(state, strict=True)  # the state-dict form fits a fresh 7-class model ...
    for k, v in model.state_dict().items():  # ... and equals the module form
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 47))
    assert out.shape == (1, 7, 33, 47) and out.abs().max() == 0  # zero score layers -> zero logits


def test_change_num_classes_of_one_head():
    model = get_model("fcn8s_lite0_multitask", 33)
    surgery.change_num_classes(model, 5, head="geo")
    assert model.head_classes == {"sem": 33, "geo": 5} and model.num_classes == 33
    out = model(torch.randn(2, 3, 40, 24))
    assert out["geo"].shape == (2, 5, 40, 24) and out["sem"].shape == (2, 33, 40, 24)
    with pytest.raises(UserError, match="no head"):
        surgery.change_num_classes(model, 5, head="depth")
    fusion = surgery.change_num_classes(get_model("fcn8s_lite0_rgb_hha"), 6)  # every stream
    assert fusion.num_classes == 6 and fusion(torch.randn(2, 6, 40, 24)).shape == (2, 6, 40, 24)
    with pytest.raises(UserError):
        surgery.change_num_classes(model, 0)


def test_expand_input_channels_weight_uses_the_mean():
    w = torch.randn(8, 3, 3, 3)
    out = surgery.expand_input_channels_weight(w, 5)
    assert out.shape == (8, 5, 3, 3)
    assert torch.equal(out[:, :3], w)
    torch.testing.assert_close(out[:, 3], w.mean(1))
    torch.testing.assert_close(out[:, 4], w.mean(1))
    assert torch.equal(surgery.expand_input_channels_weight(w, 3), w)
    with pytest.raises(UserError, match=">= 3"):
        surgery.expand_input_channels_weight(w, 2)


@pytest.mark.parametrize("name", ["fcn8s_lite0", "fcn32s_googlenet"])
def test_add_input_channels_keeps_rgb_responses(name):
    """With the new channel all zero the widened net computes what the RGB net did."""
    torch.manual_seed(0)
    model = get_model(name, 3).eval()
    _randomize_(model.score_fr, 5)
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        before = model(x)
        surgery.add_input_channels(model, 4)
        after = model(torch.cat([x, torch.zeros(1, 1, 37, 29)], 1))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    first = surgery.find_first_conv(model)[2]
    assert first.in_channels == 4
    torch.testing.assert_close(first.weight[:, 3], first.weight[:, :3].mean(1))


def test_transplant_widens_the_first_conv_for_early_fusion():
    """An RGB net transplanted into the RGB-D net: conv1 gets the depth channel as the
    mean of the RGB filters; with zero depth the RGB-D net computes the RGB net's output."""
    torch.manual_seed(0)
    rgb = get_model("fcn8s_lite0", 40).eval()
    _randomize_(rgb.score_fr, 6)
    rgbd = get_model("fcn8s_lite0_rgbd").eval()
    report = surgery.transplant(rgb, rgbd)
    assert report.expanded == ["backbone._conv_stem.weight"] and report.shape_mismatch == []
    stem = rgbd.backbone._conv_stem.weight
    assert torch.equal(stem[:, :3], rgb.backbone._conv_stem.weight)
    torch.testing.assert_close(stem[:, 3], stem[:, :3].mean(1))
    x = torch.randn(1, 3, 41, 35)
    with torch.no_grad():
        torch.testing.assert_close(rgbd({"rgb": x, "depth": torch.zeros(1, 1, 41, 35)}), rgb(x),
                                   rtol=1e-5, atol=1e-5)
    strict = surgery.transplant(rgb, get_model("fcn8s_lite0_rgbd"), expand_inputs=False)
    assert strict.expanded == [] and strict.shape_mismatch == ["backbone._conv_stem.weight"]


def test_rarefy_is_reexported_from_surgery():
    from fcnseg.analysis.rarefy import rarefy

    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1))
    x = torch.randn(1, 1, 8, 8)
    assert surgery.rarefy is rarefy and "rarefy" in surgery.__all__
    dense = surgery.rarefy(net, "1", 2)(x)  # pool stride 2 -> 1: twice as dense, same values on the grid
    torch.testing.assert_close(dense[..., ::2, ::2], net(x))
