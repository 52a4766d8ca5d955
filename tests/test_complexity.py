"""FLOP and parameter counts: hand-computed layers, and the whole nets against torch's own counter."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.complexity import count_flops, count_params, flops_by_layer
from fcnseg.models import get_model
from fcnseg.models.layers import Upscore


def test_plain_conv_by_hand():
    # 8 x 10 x 12 outputs, each 3 x 3 x 3 = 27 multiply-adds
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, (1, 3, 10, 12)) == 2 * (8 * 10 * 12) * 27


def test_strided_grouped_conv_by_hand():
    # 9x9 input, k3 s2 no pad -> 4x4; groups 4: each output sees 8/4 = 2 channels x 9 taps
    conv = nn.Conv2d(8, 16, 3, stride=2, groups=4)
    assert count_flops(conv, (1, 8, 9, 9)) == 2 * (16 * 4 * 4) * 2 * 9


def test_depthwise_conv_by_hand():
    conv = nn.Conv2d(32, 32, 5, padding=2, groups=32, bias=False)
    assert count_flops(conv, (2, 32, 7, 7)) == 2 * (2 * 32 * 7 * 7) * 25


def test_transposed_conv_by_hand():
    # every one of 4 x 5 x 5 input samples scatters into 6 channels x 4 x 4 taps
    deconv = nn.ConvTranspose2d(4, 6, 4, stride=2)
    assert count_flops(deconv, (1, 4, 5, 5)) == 2 * (4 * 5 * 5) * 6 * 16
    grouped = nn.ConvTranspose2d(4, 6, 4, stride=2, groups=2)
    assert count_flops(grouped, (1, 4, 5, 5)) == 2 * (4 * 5 * 5) * 3 * 16
    padded = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
    assert count_flops(padded, (1, 4, 5, 5)) == 2 * (4 * 5 * 5) * 6 * 9


def test_edge_padded_upscore_counts_the_padded_input():
    # Upscore pads one replicated sample per side first: 4x4 -> 6x6 samples go into the deconv
    up = Upscore(3, 3, 2, edge_pad=True)
    assert count_flops(up, (1, 3, 4, 4)) == 2 * (3 * 6 * 6) * 3 * 9


def test_linear_by_hand():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_flops(lin, (7, 3, 2, 2)) == 2 * 7 * 12 * 5


def test_batch_scales_linearly_and_short_shapes_mean_one_image():
    conv = nn.Conv2d(3, 4, 3)
    one = count_flops(conv, (1, 3, 8, 8))
    assert count_flops(conv, (3, 3, 8, 8)) == 3 * one
    assert count_flops(conv, (3, 8, 8)) == one
    assert count_flops(conv, (8, 8)) == one  # channels from the first convolution
    assert count_flops(nn.Conv2d(6, 4, 3), (8, 8)) == 2 * one


@pytest.mark.parametrize("name", ["fcn8s_lite0", "fcn32s_alexnet"])
def test_whole_net_matches_torch_flop_counter(name):
    """An independent count: torch.utils.flop_counter on a real forward pass."""
    model = get_model(name, num_classes=5).eval()
    x = torch.zeros(1, 3, 45, 61)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert count_flops(model, tuple(x.shape)) == counter.get_total_flops()


def test_vgg16_fcn8s_at_500_is_counted_on_meta_and_per_layer():
    model = get_model("fcn8s_vgg16")
    per_layer = flops_by_layer(model, (1, 3, 500, 500))
    total = sum(per_layer.values())
    with torch.device("meta"):
        meta_model = get_model("fcn8s_vgg16")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(torch.zeros(1, 3, 500, 500, device="meta"))
    assert total == counter.get_total_flops()
    # conv1_2 by hand: pad 100 makes a 698 x 698 map; 64 x 64 x 9 multiply-adds per output
    assert per_layer["backbone.features.2"] == 2 * 698 * 698 * 64 * 64 * 9
    # fc6: pool5 is 22 x 22 (ceil mode), 7 x 7 kernel -> 16 x 16 outputs of 512 x 49 MACs each
    assert per_layer["backbone.fc6"] == 2 * 16 * 16 * 4096 * 512 * 49
    assert 3.0e11 < total < 4.0e11


def test_count_params():
    conv = nn.Conv2d(3, 8, 3)
    assert count_params(conv) == 8 * 27 + 8
    shared = nn.Sequential(conv, conv)  # the same layer twice counts once
    assert count_params(shared) == 8 * 27 + 8
    model = get_model("fcn8s_lite0", num_classes=21)
    trainable = count_params(model, trainable_only=True)
    fixed = sum(m.weight.numel() for m in model.modules() if isinstance(m, Upscore))
    assert count_params(model) == trainable + fixed
