"""Non-finite weights are never saved and never served; tiny-map BatchNorm gets a warning."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg.training.engine as engine
from fcnseg.cli.main import main
from fcnseg.errors import UserError
from fcnseg.models import get_model
from fcnseg.training import load_checkpoint
from fcnseg.weights import check_finite, nonfinite_tensors, save_weights

sys.path.insert(0, str(Path(__file__).parent))
from test_training import _config, _rows, _write_camvid  # noqa: E402


def _assert_finite_checkpoint(path: Path, step: int) -> None:
    state = load_checkpoint(path)
    assert state["position"]["step"] == step
    assert nonfinite_tensors({"m": state["model"], "o": state["optimizer"]}) == []


def test_weights_that_go_nan_are_not_written_and_the_error_names_the_last_good_one(
        data_root, tmp_path, monkeypatch, capsys):
    """A finite loss with finite gradients can still leave NaN weights (here injected after
    the optimiser's third step): last.pt keeps step 2, and the error says so."""
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            self.param_groups[0]["params"][0].data[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned_step)
    run = tmp_path / "run"
    assert main(["train", str(_config(data_root, run, epochs=2, val_split=None))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "by step 3" in err and "not written" in err and f"{run / 'last.pt'} (step 2)" in err, err
    _assert_finite_checkpoint(run / "last.pt", 2)
    assert [r for r in _rows(run) if r["type"] == "nan"][0]["step"] == 3
    # --resume starts from the good step-2 checkpoint (the injection is gone: it finishes).
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert main(["train", "--resume", str(run)]) == 0
    _assert_finite_checkpoint(run / "last.pt", 8)


def test_non_finite_gradients_stop_before_the_weights_are_touched(data_root, tmp_path, monkeypatch, capsys):
    """The loss is finite but its backward pass is not (sqrt'(0) = inf times 0): the step is
    refused before the optimiser runs, or skipped under nan_policy: skip."""
    real_loss = engine.segmentation_loss
    calls = {"n": 0}

    def loss_with_nan_gradient(out, *args, **kwargs):
        calls["n"] += 1
        loss = real_loss(out, *args, **kwargs)
        if calls["n"] == 3:
            loss = loss + 0.0 * torch.sqrt(out.sum() * 0.0)  # value 0, gradient NaN
        return loss

    monkeypatch.setattr(engine, "segmentation_loss", loss_with_nan_gradient)
    run = tmp_path / "stop"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 2
    err = capsys.readouterr().err
    assert "non-finite gradients at step 3" in err and "(step 2)" in err, err
    _assert_finite_checkpoint(run / "last.pt", 2)

    calls["n"] = 0
    run2 = tmp_path / "skip"
    assert main(["train", str(_config(data_root, run2, epochs=1, val_split=None, nan_policy="skip"))]) == 0
    assert [r["step"] for r in _rows(run2) if r["type"] == "skipped"] == [3]
    state = load_checkpoint(run2 / "last.pt")
    assert state["position"]["step"] == 3 and nonfinite_tensors(state["model"]) == []


def test_resume_and_init_from_refuse_a_diverged_checkpoint(data_root, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 0
    from fcnseg.training.checkpoint import save_checkpoint

    state = load_checkpoint(run / "last.pt")
    state["model"]["score_fr.weight"][0, 0] = float("inf")
    save_checkpoint(state, run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "NaN or inf" in err and "model.score_fr.weight" in err and "Traceback" not in err
    other = tmp_path / "o"
    assert main(["train", str(_config(data_root, other, epochs=1, val_split=None,
                                      init_from=str(run / "last.pt")))]) == 2
    assert "NaN or inf" in capsys.readouterr().err


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory) -> Path:
    net = get_model("fcn32s_lite0", 11)
    state = net.state_dict()
    state["backbone._blocks.3._project_conv.weight"][0, 0] = float("nan")
    path = tmp_path_factory.mktemp("w") / "diverged.safetensors"
    save_weights(state, path, {"model": "fcn32s_lite0", "num_classes": 11, "normalization": "imagenet",
                               "options": {}})
    return path


def test_load_model_refuses_nan_weights(nan_weights):
    import fcnseg

    with pytest.raises(UserError, match="NaN or inf.*_project_conv"):
        fcnseg.load_model(nan_weights)
    with pytest.raises(UserError, match="diverged"):
        check_finite({"w": torch.tensor([1.0, float("-inf")])}, "x")
    check_finite({"w": torch.zeros(2), "i": torch.tensor([1, 2])}, "x")  # finite: no error


@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_cli_refuses_nan_weights_in_one_line(nan_weights, tmp_path, command, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    args = {
        "predict": ["predict", "--model", str(nan_weights), str(image), "--out", str(tmp_path / "o")],
        "eval": ["eval", "--model", str(nan_weights), "--dataset", "camvid", "--root",
                 str(_write_camvid(tmp_path / "cv", n_train=1, n_val=1)), "--split", "val"],
        "export": ["export", "--model", str(nan_weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NaN or inf" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.onnx").exists()


def test_batchnorm_over_a_few_values_per_channel_is_warned_about(data_root, tmp_path, capsys):
    """24x32 images at stride 32 are 1x1 maps: batch 2 leaves 2 values per channel."""
    run = tmp_path / "bn"
    assert main(["train", str(_config(data_root, run, epochs=1, max_iters=1, val_split=None,
                                      freeze_bn=False, optimizer="adamw", lr=1e-4))]) == 0
    warn = [r for r in _rows(run) if r["type"] == "warning"]
    assert len(warn) == 1 and "only 2 value(s) per channel" in warn[0]["message"]
    assert "freeze_bn" in capsys.readouterr().err
    quiet = tmp_path / "frozen"
    assert main(["train", str(_config(data_root, quiet, epochs=1, max_iters=1, val_split=None))]) == 0
    assert not [r for r in _rows(quiet) if r["type"] == "warning"]
