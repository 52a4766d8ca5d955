"""Export to ONNX / TorchScript / ExportedProgram: the files run at sizes other than the traced one
and match PyTorch within 1e-4 relative; metadata travels; the CLI and its bad-input exits."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.cli.main import main
from fcnseg.models import get_model
from fcnseg.models.fcn import FCN
from fcnseg.models.vgg import VGG16Trunk
from fcnseg.runtime.export import compare_outputs, export_model, load_exported

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# three sizes, none the traced 64x64 except one, one odd in both axes, one non-square
from conftest import randomise_  # noqa: E402

ONNX_SIZES = [(1, 37, 53), (2, 64, 64), (1, 45, 30)]
META = {"model": "x", "num_classes": 4, "normalization": "imagenet", "class_names": ["a", "b", "c", "d"]}


def thin_vgg_fcn8s(num_classes: int = 3) -> FCN:
    """The VGG16 FCN-8s geometry (pad 100, ceil-mode pools, 7x7 fc6, crops) with a 64-wide fc6/fc7.

    Same layers, strides, kernels and crop offsets as fcn8s_vgg16, a tenth of the bytes:
    it checks that the exported shape arithmetic generalises without a 500 MB file.
    """
    trunk = VGG16Trunk()
    trunk.out_channels = {**VGG16Trunk.out_channels, "out": 64}
    trunk.fc6 = nn.Conv2d(512, 64, 7)
    trunk.fc7 = nn.Conv2d(64, 64, 1)
    return randomise_(FCN(trunk, num_classes, "8s"))


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return randomise_(get_model("fcn8s_lite0", num_classes=4))


def assert_matches(model, runner, sizes, tol=1e-4):
    errors = compare_outputs(model, runner, sizes)
    assert set(errors) == set(sizes)
    for size, err in errors.items():
        assert err <= tol, f"{size}: relative error {err:.2e}"


def test_onnx_lite0_dynamic_sizes_match_pytorch(lite0, tmp_path):
    path = tmp_path / "lite0.onnx"
    result = export_model(lite0, path, "onnx", meta=META, check_sizes=None)
    assert result.size_bytes == path.stat().st_size > 1_000_000
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fcnseg"]) == META
    run = load_exported(path, "onnx")
    assert_matches(lite0, run, ONNX_SIZES)
    # the reference output is not trivially zero, so the comparison has teeth
    assert run(torch.randn(1, 3, 37, 53)).abs().max() > 1e-3


def test_onnx_vgg_geometry_dynamic_sizes_match_pytorch(tmp_path):
    model = thin_vgg_fcn8s()
    path = tmp_path / "vgg_thin.onnx"
    export_model(model, path, "onnx", check_sizes=None)
    assert_matches(model, load_exported(path, "onnx"), ONNX_SIZES + [(1, 1, 1)])


@pytest.mark.slow
def test_onnx_full_fcn8s_vgg16(tmp_path):
    """The real 134M-parameter net (a 537 MB file; ~50 s on 2 busy cores, hence slow)."""
    model = randomise_(get_model("fcn8s_vgg16", num_classes=5))
    path = tmp_path / "fcn8s_vgg16.onnx"
    export_model(model, path, "onnx", check_sizes=None)
    assert path.stat().st_size > 500e6
    assert_matches(model, load_exported(path, "onnx"), ONNX_SIZES)


def test_export_model_checks_other_sizes_itself(lite0, tmp_path):
    result = export_model(lite0, tmp_path / "m.onnx", "onnx", check_sizes=[(2, 77, 53), (1, 45, 97)])
    assert set(result.checks) == {(2, 77, 53), (1, 45, 97)}
    assert max(result.checks.values()) <= 1e-4


def test_torchscript_round_trip(lite0, tmp_path):
    path = tmp_path / "lite0.pt"
    export_model(lite0, path, "torchscript", meta=META, check_sizes=None)
    extra = {"fcnseg.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["fcnseg.json"]) == META
    assert_matches(lite0, lambda x: loaded(x), [(1, 37, 53), (2, 45, 30)], tol=1e-5)


def test_exported_program_round_trip(lite0, tmp_path):
    path = tmp_path / "lite0.pt2"
    result = export_model(lite0, path, "exported-program", meta=META, check_sizes=None)
    assert "accepts height >= " in result.notes[0]
    extra = {"fcnseg.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    assert json.loads(extra["fcnseg.json"]) == META
    module = program.module()
    # the program refuses maps of one pixel (inputs <= 32 px for stride 32): sizes above that are free
    assert_matches(lite0, lambda x: module(x), [(1, 37, 53), (2, 64, 64), (1, 45, 97)], tol=1e-5)


# --------------------------------------------------------------------------- CLI
def test_cli_export_onnx_then_predict_with_onnxruntime(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    rc = main(["export", "--model", "fcn8s_lite0", "--num-classes", "3", "--format", "onnx", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "checked against PyTorch" in text
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["fcnseg"])["normalization"] == "imagenet"
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(img)
    rc = main(["predict", str(img), "--model", str(out), "--backend", "onnxruntime", "--out", str(tmp_path / "pred"),
               "--quiet"])
    assert rc == 0
    label = np.asarray(Image.open(tmp_path / "pred" / "img.png"))
    assert label.shape == (40, 52)


def test_cli_export_torchscript(tmp_path):
    out = tmp_path / "m.pt"
    assert main(["export", "-m", "fcn32s_lite0", "--num-classes", "2", "-f", "torchscript", "-o", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 1_000_000


@pytest.mark.parametrize("argv,needle", [
    (["--model", "no_such_model"], "unknown model"),
    (["--model", "fcn8s_lite0", "--opset", "13"], "opset must be >= 17"),
    (["--model", "x.onnx"], "holds no PyTorch network for export"),
    (["--model", "fcn8s_lite0", "--trace-size", "axb"], "--trace-size 'axb': expected HxW"),
    (["--model", "fcn8s_lite0", "--trace-size", "0x5"], "--trace-size '0x5'"),
    (["--model", "fcn8s_lite0", "--trace-size", "100000x100000"], "--trace-size 100000x100000: a forward pass"),
    (["--model", "missing.safetensors"], "no such model file"),
])
def test_cli_export_bad_input_exits_2(tmp_path, capsys, argv, needle):
    rc = main(["export", *argv, "--out", str(tmp_path / "m.onnx")])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_cli_export_out_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "m.onnx", blocker / "sub" / "m.onnx", tmp_path):
        assert main(["export", "--model", "fcn32s_lite0", "--num-classes", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--out" in err and "Traceback" not in err
    # a read-only file system (simulated: tests run as root, who may write anywhere else)
    from fcnseg import outpaths

    class RO:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(outpaths.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(outpaths.os, "statvfs", lambda p: RO())
    assert main(["export", "--model", "fcn32s_lite0", "--out", str(tmp_path / "ro" / "m.onnx")]) == 2
    assert "read-only file system" in capsys.readouterr().err


def test_cli_export_unknown_format_is_rejected(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", "fcn8s_lite0", "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2
