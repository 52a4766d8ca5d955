"""Shift-and-stitch and filter rarefaction: the paper's equivalence, and exactness at the
original sampling positions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fcnseg.analysis.dense import shift_and_stitch
from fcnseg.analysis.rarefy import RarefiedMaxPool2d, rarefy
from fcnseg.errors import UserError


def tiny_net(pad: int = 0, ceil: bool = False) -> nn.Sequential:
    """conv, pool stride 2, conv, conv: the paper's small case (output stride 2)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=pad), nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=ceil),
        nn.Conv2d(4, 4, 3, padding=pad), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=pad),
    )
    return net.double().eval()


def two_pool_net(pad: int = 0, ceil: bool = False) -> nn.Sequential:
    """Output stride 4: a strided conv and a pooling layer, with a pool with padding."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=pad), nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=ceil),                 # "2"
        nn.Conv2d(4, 4, 3, padding=pad), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=pad),          # "6"
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=pad),
    )
    net[4].running_mean.uniform_(-1, 1)
    net[4].running_var.uniform_(0.5, 2)
    return net.double().eval()


SIZES = [(20, 20), (21, 26), (23, 19), (30, 25)]


@pytest.mark.parametrize("size", SIZES)
def test_shift_and_stitch_equals_rarefaction_everywhere_without_padding(size):
    net = tiny_net(pad=0)
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, 2)
        rarefied = rarefy(net, "2", 2)(x)
    assert stitched.shape == rarefied.shape
    assert rarefied.shape[-2:] == (size[0] - 11, size[1] - 11)  # receptive field 12, stride 1
    torch.testing.assert_close(stitched, rarefied, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES)
def test_shift_and_stitch_equals_rarefaction_for_stride_4(size):
    net = two_pool_net(pad=0)
    x = torch.randn(1, 2, size[0] + 10, size[1] + 10, dtype=torch.float64)
    with torch.no_grad():
        full = rarefy(rarefy(net, "2", 2), "6", 2)
        stitched = shift_and_stitch(net, x, 4)
        torch.testing.assert_close(stitched, full(x), rtol=0, atol=1e-12)
        # only the last subsampling removed: stride 2, shifts of 2 pixels
        half = shift_and_stitch(net, x, 2, output_stride=4)
        torch.testing.assert_close(half, full(x)[..., ::2, ::2], rtol=0, atol=1e-12)
        torch.testing.assert_close(half, rarefy(net, "6", 2)(x), rtol=0, atol=1e-12)


def test_shift_and_stitch_equals_rarefaction_inside_with_padding():
    """With zero padding in the net, a shifted run pads its own top/left border, so the two
    agree exactly wherever the receptive field stays inside the image."""
    net = tiny_net(pad=1, ceil=True)
    x = torch.randn(1, 2, 40, 37, dtype=torch.float64)
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, 2)
        rarefied = rarefy(net, "2", 2)(x)
    # the sizes may differ by a sample at the far border (ceil-mode windows of the shifted runs)
    h = min(stitched.shape[-2], rarefied.shape[-2])
    w = min(stitched.shape[-1], rarefied.shape[-1])
    assert h >= 38 and w >= 35
    m = 12  # receptive field
    torch.testing.assert_close(stitched[..., m:h - m, m:w - m], rarefied[..., m:h - m, m:w - m],
                               rtol=0, atol=1e-12)
    # and the borders really differ (the test above is not vacuous about where it looks)
    assert not torch.allclose(stitched[..., :1, :], rarefied[..., :1, :w])


def test_stitched_map_holds_the_unshifted_output_at_the_sampling_positions():
    net = tiny_net(pad=1)
    x = torch.randn(1, 2, 24, 30, dtype=torch.float64)
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, 2)
        torch.testing.assert_close(stitched[..., ::2, ::2], net(x)[..., :12, :15])


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("size", [(17, 17), (18, 23), (25, 20), (9, 14)])
def test_rarefied_net_equals_original_at_sampling_positions(size, ceil):
    net = two_pool_net(pad=1, ceil=ceil)
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        for layers, f in ((["2"], 2), (["6"], 2), (["2", "6"], 4)):
            model = net
            for name in layers:
                model = rarefy(model, name, 2)
            dense = model(x)
            torch.testing.assert_close(dense[..., ::f, ::f], ref, rtol=0, atol=1e-12)


def test_rarefied_ceil_mode_pool_stack_like_vgg():
    """Ceil-mode pools after a padded first conv (the VGG16 trunk's geometry, shrunk)."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=5), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(6, 2, 1),
    ).double().eval()
    for size in [(13, 13), (16, 21), (27, 18)]:
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            ref = net(x)
            dense = rarefy(rarefy(net, "5", 2), "8", 2)
            torch.testing.assert_close(dense(x)[..., ::4, ::4], ref, rtol=0, atol=1e-12)
    assert isinstance(dense[8], RarefiedMaxPool2d) and dense[8].stride == (1, 1)
    assert dense[9].dilation == (4, 4) and dense[3].dilation == (1, 1)


def test_rarefy_handles_strided_conv_reflect_padding_before_and_same_padding():
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 3, 5, padding="same"), nn.AvgPool2d(1, 1), nn.Conv2d(3, 2, 3, padding=1),
    ).double().eval()
    x = torch.randn(1, 2, 39, 42, dtype=torch.float64)
    with torch.no_grad():
        dense = rarefy(net, "0", 2)
        torch.testing.assert_close(dense(x)[..., ::2, ::2], net(x), rtol=0, atol=1e-12)
        stitched = shift_and_stitch(net, x, 2)
        m = 16  # more than the receptive field (15)
        torch.testing.assert_close(stitched[..., m:-m, m:-m], dense(x)[..., m:stitched.shape[-2] - m,
                                                                         m:stitched.shape[-1] - m],
                                   rtol=0, atol=1e-12)


def test_rarefy_leaves_the_input_model_alone_and_keeps_weights():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = rarefy(net, "2", 2)
    assert net[3].dilation == (1, 1) and out[3].dilation == (2, 2)
    assert isinstance(net[2], nn.MaxPool2d)
    for k, v in out.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_rarefy_refuses_what_it_cannot_do():
    net = tiny_net()
    with pytest.raises(UserError, match="no layer 'nope'"):
        rarefy(net, "nope", 2)
    with pytest.raises(UserError, match="is a ReLU"):
        rarefy(net, "1", 2)
    with pytest.raises(UserError, match="not divisible"):
        rarefy(net, "2", 4)
    with pytest.raises(UserError, match="positive integer"):
        rarefy(net, "2", 0)
    head = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.ConvTranspose2d(1, 1, 4, 2))
    with pytest.raises(UserError, match="ConvTranspose2d"):
        rarefy(head, "1", 2)
    avg = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2))
    with pytest.raises(UserError, match="average"):
        rarefy(avg, "0", 2)
    refl = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(UserError, match="'reflect' padding"):
        rarefy(refl, "0", 2)


def test_shift_and_stitch_refuses_bad_arguments():
    net = tiny_net()
    x = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    with pytest.raises(UserError, match="multiple of factor"):
        shift_and_stitch(net, x, 3, output_stride=4)
    with pytest.raises(UserError, match="N x C x H x W"):
        shift_and_stitch(net, x[0], 2)
    with pytest.raises(UserError, match="too small"):
        shift_and_stitch(net, x[..., :1, :1], 2)


def test_shift_and_stitch_accepts_a_trunk_returning_taps():
    net = tiny_net()

    def trunk(x):
        return {"pool3": x, "out": net(x)}

    x = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(shift_and_stitch(trunk, x, 2), shift_and_stitch(net, x, 2))


@pytest.mark.slow
def test_rarefied_vgg16_trunk_equals_original_at_sampling_positions():
    """The real VGG16 trunk (pad 100, ceil-mode pools, 7x7 fc6): rarefy pool4 and pool5."""
    from fcnseg.models.geometry import layer_specs, receptive_field
    from fcnseg.models.vgg import VGG16Trunk

    net = VGG16Trunk().eval()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        ref = net(x)
        dense = rarefy(rarefy(net, "features.23", 2), "features.30", 2)
        out = dense(x)
    torch.testing.assert_close(out["out"][..., ::4, ::4], ref["out"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["pool4"][..., ::2, ::2], ref["pool4"])
    torch.testing.assert_close(out["pool3"], ref["pool3"])
    assert receptive_field(list(layer_specs(dense))) == 404
