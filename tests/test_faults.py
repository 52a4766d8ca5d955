"""Faults a user can reach: each ends with a one-line error naming the file or option and
what was expected (exit 2), or with the work done (exit 0); nothing is lost or half-made."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fcnseg.cli.main import main
from fcnseg.errors import UserError
from fcnseg.training import load_config

from test_training import _config, _rows, _write_camvid


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _write_camvid(tmp_path_factory.mktemp("camvid"), n_train=4, n_val=2)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------- 3. training options
@pytest.mark.parametrize("args, option, expected", [
    (["--epochs", "abc"], "epochs", "an integer >= 1"),
    (["--batch-size", "two"], "batch_size", "an integer >= 1"),
    (["--batch-size", "2.5"], "batch_size", "an integer >= 1"),
    (["--workers", "many"], "workers", "an integer >= 0"),
    (["--lr", "-0.01"], "lr", "a number > 0"),
    (["--momentum", "5"], "momentum", "a number in [0, 1)"),
    (["--crop-size", "[128, -5]"], "crop_size", "a list of 2 integers >= 1"),
    (["--crop-size", "[128]"], "crop_size", "a list of 2 integers >= 1"),
    (["--scale-range", "[2, 0.5]"], "scale_range", "[min, max] with min <= max"),
    (["--class-weights", "[1, x]"], "class_weights", "none, median_freq, sqrt_median_freq or a list of numbers >= 0"),
    (["--device", "gpu"], "device", "auto, cpu, cuda or cuda:N"),
    (["--optimizer", "adam"], "optimizer", "one of sgd, adamw"),
    (["--flip", "maybe"], "flip", "true or false"),
    (["--lr", "nan"], "lr", "a number > 0"),
    (["--seed", "-1"], "seed", "an integer in [0, "),
])
def test_bad_training_option_is_one_line_and_creates_nothing(tmp_path, data_root, capsys, args, option, expected):
    run = tmp_path / "run"
    assert main(["train", str(_config(data_root, run)), *args]) == 2
    line = _one_line_error(capsys)
    assert f"{option}: expected {expected}" in line
    assert not run.exists()


def test_bad_yaml_values_are_all_reported_at_once(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    path = _config(data_root, run)
    cfg = yaml.safe_load(path.read_text())
    cfg.update({"epochs": "1", "batch_size": "two", "workers": "many", "lr": -0.01, "momentum": 5,
                "crop_size": [128, -5]})
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    line = _one_line_error(capsys)
    assert str(path) in line and "6 invalid options" in line
    for name in ("epochs", "batch_size", "workers", "lr", "momentum", "crop_size"):
        assert f"{name}: expected" in line
    assert "got '1'" in line  # a quoted number is a string, and the message shows it
    assert not run.exists()


def test_valid_values_are_converted_to_the_declared_types(tmp_path, data_root):
    cfg = load_config(_config(data_root, tmp_path / "r"), {"lr": "1e-3", "momentum": "0", "crop_size": "[16, 16]",
                                                             "scale_range": "[0.5, 2]", "device": "cuda:1"})
    assert cfg.lr == 1e-3 and isinstance(cfg.momentum, float) and cfg.scale_range == [0.5, 2.0]
    with pytest.raises(UserError, match="momentum: expected"):
        from fcnseg.training import TrainConfig

        TrainConfig.from_dict({"momentum": 1.0})


def test_every_field_declares_its_type_and_non_string_fields_a_range_or_choice():
    """The declaration is the single source: a new numeric option without a range is caught here."""
    import dataclasses
    import typing

    from fcnseg.training import TrainConfig
    from fcnseg.training.config import _base

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, _ = _base(hints[f.name])
        if kind in (int, float):
            assert {"min", "max", "gt", "lt"} & set(f.metadata), f.name


def test_warmup_longer_than_the_run_warns(tmp_path, data_root, capsys):
    run = tmp_path / "w"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None, warmup_iters=50))]) == 0
    err = capsys.readouterr().err
    assert "warmup_iters 50 is larger than the run's 2 steps" in err
    assert any(r["type"] == "warning" and "warmup_iters" in r["message"] for r in _rows(run))
