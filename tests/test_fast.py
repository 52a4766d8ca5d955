"""The fast inference path computes the same logits as the eager model (within float rounding)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import randomise_  # noqa: E402
from fcnseg.models import get_model
from fcnseg.models.fcn import FCN
from fcnseg.models.layers import Upscore
from fcnseg.models.vgg import VGG16Trunk
from fcnseg.preprocess import normalize
from fcnseg.runtime.fast import (
    ConvPointwise,
    ShapeFrozen,
    cpu_has_vnni,
    depthwise_upsampling,
    fold_batchnorm,
    fuse_conv_activations,
    labels_from_logits,
    normalize_batch,
    optimize_for_inference,
    quantize_int8,
)

SIZES = [(1, 37, 53), (2, 64, 64), (1, 45, 30)]


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return randomise_(get_model("fcn8s_lite0", num_classes=5))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def assert_same_logits(model, fast, sizes=SIZES, tol=1e-4):
    gen = torch.Generator().manual_seed(1)
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w, generator=gen)
        with torch.inference_mode():
            ref, got = model(x), fast(x)
        assert got.shape == ref.shape
        assert max_rel(got, ref) <= tol, (n, h, w)


def test_fold_batchnorm_removes_every_bn_of_lite0(lite0):
    net = copy.deepcopy(lite0)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert fold_batchnorm(net) == n_bn == 49
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert type(net) is type(lite0) and net.num_classes == 5  # structure and attributes kept
    assert_same_logits(lite0, net, SIZES[:1])


def test_fold_batchnorm_needs_eval_mode(lite0):
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(lite0).train())


def test_fold_leaves_a_bn_whose_conv_output_is_also_used_elsewhere():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # y is needed unnormalised too: folding would be wrong

    assert fold_batchnorm(Branchy().eval()) == 0


def test_fuse_conv_activations_of_lite0_and_vgg(lite0):
    """Every ReLU6 of Lite0 follows its own conv once the BNs are folded: all 33 fuse, the shared
    ``act`` modules become Identity, and the logits are the unfused ones (fp32 and bf16)."""
    net = copy.deepcopy(lite0)
    fold_batchnorm(net)
    assert fuse_conv_activations(net) == 33
    assert sum(isinstance(m, ConvPointwise) for m in net.modules()) == 33
    assert isinstance(net.backbone.act, nn.Identity)
    assert all(isinstance(block.act, nn.Identity) for block in net.backbone._blocks)
    assert_same_logits(lite0, net, tol=1e-5)
    ref16 = copy.deepcopy(lite0).to(torch.bfloat16)
    fold_batchnorm(ref16)
    fused16 = copy.deepcopy(ref16)
    assert fuse_conv_activations(fused16) == 33
    x = torch.randn(1, 3, 48, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert max_rel(fused16(x), ref16(x)) < 2e-2
    vgg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3), nn.ReLU()).eval()
    fused = copy.deepcopy(vgg)
    assert fuse_conv_activations(fused) == 2 and isinstance(fused[0], ConvPointwise)
    assert_same_logits(vgg, fused, tol=1e-6)


def test_fusion_leaves_activations_that_do_not_only_follow_a_conv():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU6()   # shared: once after a conv, once after an add
            self.act2 = nn.ReLU()   # after a conv whose output is used twice

        def forward(self, x):
            y = self.act(self.a(x))
            z = self.b(x)
            return self.act(y + z) + self.act2(z) + z

    m = Mixed().eval()
    fused = copy.deepcopy(m)
    assert fuse_conv_activations(fused) == 0
    assert isinstance(fused.a, nn.Conv2d) and isinstance(fused.act, nn.ReLU6)
    assert_same_logits(m, fused, tol=0)


def test_fused_net_traces_and_freezes(lite0):
    """The fused op's scalar list does not trace: under the tracer the pair runs unfused, and the
    frozen per-shape graphs (the CPU default) still build and agree."""
    fast = optimize_for_inference(lite0, mode="jit")
    assert "33 conv+activation fused" in fast.method
    shapes = [(1, 3, 37, 53)] * 2
    for shape in shapes:
        with torch.inference_mode():
            x = torch.randn(*shape)
            assert max_rel(fast(x), lite0(x)) < 1e-4
    assert fast.net.traced_shapes == [(1, 3, 37, 53)]
    plain = optimize_for_inference(lite0, fuse_activations=False)
    assert "fused" not in plain.method and not any(isinstance(m, ConvPointwise) for m in plain.modules())


def test_depthwise_upsampling_only_for_diagonal_layers(lite0):
    net = copy.deepcopy(lite0)
    assert depthwise_upsampling(net) == 3
    for m in net.modules():
        if isinstance(m, Upscore):
            assert m.groups == m.out_channels == 5 and m.weight.shape[1] == 1
    assert_same_logits(lite0, net, SIZES[:1], tol=1e-5)
    learned = nn.ConvTranspose2d(4, 4, 4, stride=2, bias=False)  # dense random weights: not diagonal
    assert depthwise_upsampling(learned) == 0 and learned.groups == 1


def test_optimized_lite0_equals_eager(lite0):
    fast = optimize_for_inference(lite0)
    assert "folded 49 BatchNorm" in fast.method and "channels_last" in fast.method
    assert_same_logits(lite0, fast)
    # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in lite0.modules()) == 49


def test_frozen_torchscript_lite0_equals_eager_at_untraced_sizes(lite0):
    fast = optimize_for_inference(lite0, mode="jit", example_input=torch.randn(1, 3, 64, 64))
    assert "TorchScript" in fast.method
    assert_same_logits(lite0, fast)


def test_optimized_vgg_geometry_equals_eager():
    """VGG16 FCN-8s layers and crops (thin fc6/fc7 to stay small), including the odd sizes."""
    trunk = VGG16Trunk()
    trunk.out_channels = {**VGG16Trunk.out_channels, "out": 32}
    trunk.fc6, trunk.fc7 = nn.Conv2d(512, 32, 7), nn.Conv2d(32, 32, 1)
    model = randomise_(FCN(trunk, 3, "8s"))
    fast = optimize_for_inference(model)
    assert "3 upsampling layer(s) depthwise" in fast.method
    assert_same_logits(model, fast, [(1, 37, 53), (1, 1, 1)])


def test_bf16_is_close_but_not_exact(lite0):
    fast = optimize_for_inference(lite0, dtype="bf16")
    x = torch.randn(1, 3, 40, 40)
    with torch.inference_mode():
        out, ref = fast(x), lite0(x)
    assert out.dtype == torch.float32
    assert max_rel(out, ref) < 0.1


def test_bad_options_are_user_errors(lite0):
    from fcnseg.errors import UserError

    with pytest.raises(UserError, match="mode"):
        optimize_for_inference(lite0, mode="fastest")
    with pytest.raises(UserError, match="dtype"):
        optimize_for_inference(lite0, dtype="int4")


@pytest.mark.parametrize("preset", ["caffe", "imagenet"])
def test_normalize_batch_equals_reference_normalize(preset):
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    fast = normalize_batch(img, preset)
    assert fast.shape == (1, 3, 37, 53) and fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast, normalize(img, preset).unsqueeze(0))
    assert normalize_batch(img, preset, channels_last=False).is_contiguous()


def test_labels_from_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 1] = 1.0
    logits[0, 1, 1, 0] = 1.0
    labels = labels_from_logits(logits)
    assert labels.dtype == torch.uint8
    assert labels[0].tolist() == [[0, 2], [1, 0]]  # all-zero pixels: ties go to the first class
    big = torch.randn(2, 7, 31, 45)
    big[:, 4] = big[:, 2]  # exact ties between classes 2 and 4
    for t in (big, big.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(labels_from_logits(t).long(), t.argmax(1))


def test_int8_onnxruntime_is_quantised_and_close(lite0, tmp_path):
    onnx = pytest.importorskip("onnx")
    gen = torch.Generator().manual_seed(2)
    calib = [torch.randn(1, 3, 48, 64, generator=gen) for _ in range(2)]
    q = quantize_int8(lite0, calib, backend="onnxruntime", out_path=tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = torch.randn(1, 3, 48, 64, generator=gen)
    with torch.inference_mode():
        ref = lite0(x)
    out = q(x)
    assert out.shape == ref.shape
    assert max_rel(out, ref) < 0.25  # int8 is an approximation: close, not equal
    assert max_rel(out, ref) > 0  # ... and really not the fp32 graph
    # dynamic sizes survive quantisation
    assert q(torch.randn(1, 3, 37, 53)).shape == (1, 5, 37, 53)


def test_int8_needs_calibration_and_a_known_backend(lite0):
    from fcnseg.errors import UserError

    with pytest.raises(UserError, match="calibration"):
        quantize_int8(lite0, [])
    with pytest.raises(UserError, match="backend"):
        quantize_int8(lite0, [torch.zeros(1, 3, 8, 8)], backend="tensorrt")


def test_cpu_has_vnni_agrees_with_cpuinfo():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    found = cpu_has_vnni()
    if found is None:
        assert "avx512_vnni" not in flags.split() and "avx_vnni" not in flags.split()
    else:
        assert found in flags.split()


def test_rewrites_follow_the_device_plan(lite0, monkeypatch):
    """CPU: depthwise upsampling; a CUDA plan (tested without a GPU): the dense upsampling kept."""
    import fcnseg.runtime.fast as fast
    from fcnseg.runtime.choice import DeviceSpec, plan_rewrites

    cpu = optimize_for_inference(lite0)
    assert any("depthwise" in s for s in cpu.steps) and cpu.channels_last
    assert_same_logits(lite0, cpu)
    monkeypatch.setattr(fast, "device_plan", lambda model, fixed_size=False: plan_rewrites(
        DeviceSpec("cuda", cuda_capability=(9, 0)), fixed_size=fixed_size))
    as_on_cuda = fast.optimize_for_inference(lite0, fixed_size=True)
    assert not any("depthwise" in s for s in as_on_cuda.steps)
    assert as_on_cuda.channels_last and as_on_cuda.cudnn_benchmark and "cudnn.benchmark" in as_on_cuda.steps
    assert all(m.groups == 1 for m in as_on_cuda.eager_net.modules() if isinstance(m, nn.ConvTranspose2d))
    assert_same_logits(lite0, as_on_cuda)  # cudnn.benchmark is inert on the CPU
    assert not torch.backends.cudnn.benchmark  # set only while the net runs


def test_frozen_graphs_are_per_shape_and_only_for_repeated_shapes():
    """A trace bakes in crop offsets: each shape gets its own graph, traced on its second use."""
    trunk = VGG16Trunk()
    trunk.out_channels = {**VGG16Trunk.out_channels, "out": 32}
    trunk.fc6, trunk.fc7 = nn.Conv2d(512, 32, 7), nn.Conv2d(32, 32, 1)
    model = randomise_(FCN(trunk, 3, "8s"))
    fast = optimize_for_inference(model, mode="jit")
    frozen = fast.net
    assert isinstance(frozen, ShapeFrozen) and "per input shape" in fast.method
    shapes = [(1, 3, 37, 53), (1, 3, 37, 53), (1, 3, 64, 80), (1, 3, 64, 80), (1, 3, 37, 53), (1, 3, 41, 41)]
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.inference_mode():
            out, ref = fast(x), model(x)
        assert out.shape == ref.shape and max_rel(out, ref) < 1e-4, shape
    # traced on the second sight of each shape; a shape seen once (41x41) is never traced
    assert frozen.traced_shapes == [(1, 3, 37, 53), (1, 3, 64, 80)]


def test_a_frozen_graph_that_disagrees_with_eager_is_not_used(capsys):
    class Drifting(nn.Module):
        """Python-side state a trace cannot follow: the traced graph keeps one call's constant."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x) * self.calls

    net = Drifting().eval()
    frozen = ShapeFrozen(net, trace_after=1)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        frozen(x)
        assert frozen.traced_shapes == [] and "differs from eager" in capsys.readouterr().err
        calls = net.calls
        frozen(x)
    assert net.calls == calls + 1  # that shape now runs eagerly, without another trace


def test_a_net_that_cannot_be_traced_runs_eagerly(capsys):
    class Untraceable(nn.Module):
        def forward(self, x):
            return {"a": x, "b": [x]} if x.numel() else x  # a list inside a dict output: no trace

    frozen = ShapeFrozen(Untraceable(), trace_after=1)
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode():
        out = frozen(x)
    assert torch.equal(out["a"], x) and frozen.traced_shapes == []
    assert "running eagerly" in capsys.readouterr().err


def test_cpu_default_backend_runs_frozen_graphs(lite0, monkeypatch):
    from fcnseg.runtime.backends import TorchBackend

    monkeypatch.setenv("FCNSEG_FREEZE", "0")  # the switch users have: no frozen graphs
    backend = TorchBackend(lite0, torch.device("cpu"))
    backend(torch.randn(1, 3, 32, 32))
    assert not isinstance(backend.runner.net, ShapeFrozen)
    monkeypatch.setenv("FCNSEG_FREEZE", "1")
    backend = TorchBackend(lite0, torch.device("cpu"))
    x = torch.randn(1, 3, 48, 64)
    outs = [backend(x) for _ in range(3)]
    frozen = backend.runner.net
    assert isinstance(frozen, ShapeFrozen) and frozen.traced_shapes == [(1, 3, 48, 64)]
    with torch.inference_mode():
        ref = lite0(x)
    for out in outs:
        assert max_rel(out, ref) < 1e-4


def test_frozen_graphs_by_default_only_for_small_fp32_nets_on_the_cpu(monkeypatch):
    """fp32 small nets freeze on the CPU; bf16 (fused eager activations are faster), CUDA,
    VGG-size nets and FCNSEG_FREEZE=0 do not."""
    from fcnseg.runtime import backends
    from fcnseg.runtime.backends import TorchBackend, freeze_by_default

    monkeypatch.delenv("FCNSEG_FREEZE", raising=False)
    small = nn.Conv2d(3, 4, 3)
    cpu = torch.device("cpu")
    assert freeze_by_default(small, cpu) and freeze_by_default(small, cpu, "fp32")
    assert not freeze_by_default(small, cpu, "bf16")
    assert not freeze_by_default(small, torch.device("cuda"))
    monkeypatch.setattr(backends, "FREEZE_MAX_WEIGHT_BYTES", 100)
    assert not freeze_by_default(small, cpu)  # 4*3*3*3 + 4 parameters: 448 bytes
    monkeypatch.setattr(backends, "FREEZE_MAX_WEIGHT_BYTES", 256 * 2 ** 20)
    monkeypatch.setenv("FCNSEG_FREEZE", "0")
    assert not freeze_by_default(small, cpu)
    monkeypatch.delenv("FCNSEG_FREEZE")
    # what the backend builds follows it
    assert isinstance(TorchBackend(small, cpu, precision="fp32").runner.net, ShapeFrozen)
    assert not isinstance(TorchBackend(small, cpu, precision="bf16").runner.net, ShapeFrozen)
