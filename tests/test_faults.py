"""Faults a user can reach: each ends with a one-line error naming the file or option and
what was expected (exit 2), or with the work done (exit 0); nothing is lost or half-made."""
from __future__ import annotations

import os
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


def test_photometric_knobs_are_checked_with_the_other_options():
    """photometric (issue 15) goes through the same one-error-for-all validation: each knob's type
    and range named, numeric strings converted, alongside the other options' problems."""
    with pytest.raises(UserError) as info:
        load_config(None, {"photometric": "{hue: 0.9, gamma: abc, blur_sigma: 3, blur_p: true}", "epochs": "x"})
    line = str(info.value)
    assert "\n" not in line and "2 invalid options" in line
    for needle in ("photometric hue must be in [0, 0.5], got 0.9", "photometric gamma: expected a number, got 'abc'",
                   "photometric blur_sigma: expected a list of 2 numbers", "photometric blur_p: expected a number",
                   "epochs: expected an integer"):
        assert needle in line
    cfg = load_config(None, {"photometric": "{hue: '0.1', blur_sigma: [1, 2]}"})
    assert cfg.photometric == {"hue": 0.1, "blur_sigma": [1.0, 2.0]}


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


# ---------------------------------------------------------------------------- 4. run folders
def test_run_dir_under_a_file_is_one_line(tmp_path, data_root, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", str(_config(data_root, tmp_path / "r")), "--run-dir", str(blocker / "run")]) == 2
    line = _one_line_error(capsys)
    assert "--run-dir" in line and "is a file" in line
    assert main(["train", str(_config(data_root, tmp_path / "r")), "--run-dir", str(blocker)]) == 2
    assert "is a file; expected a folder" in _one_line_error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_dir_in_a_read_only_folder_is_one_line(tmp_path, data_root, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["train", str(_config(data_root, tmp_path / "r")), "--run-dir", str(ro / "run")]) == 2
        assert "not writable" in _one_line_error(capsys)
    finally:
        ro.chmod(0o755)


def test_read_only_file_system_is_named(tmp_path, monkeypatch):
    from fcnseg import outpaths

    class RO:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(outpaths.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(outpaths.os, "statvfs", lambda p: RO())
    with pytest.raises(UserError, match="--run-dir .*read-only file system"):
        outpaths.check_output_dir(tmp_path / "run", "--run-dir")
    with pytest.raises(UserError, match="--json .*read-only file system"):
        outpaths.check_output_file(tmp_path / "x.json", "--json")


def test_existing_run_is_refused_then_overwritten_on_request(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    cfg = _config(data_root, run, epochs=1, max_iters=1)
    assert main(["train", str(cfg)]) == 0
    before = (run / "last.pt").read_bytes()
    n_rows = len(_rows(run))
    # the validation improved on -1, so a best model was written: same mode as the other outputs
    assert (run / "best.safetensors").stat().st_mode & 0o777 == (run / "config.yaml").stat().st_mode & 0o777
    assert (run / "best.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 2
    line = _one_line_error(capsys)
    assert "already holds" in line and f"--resume {run}" in line and "--overwrite" in line
    assert (run / "last.pt").read_bytes() == before and len(_rows(run)) == n_rows  # untouched
    assert main(["train", str(cfg), "--resume", str(run), "--overwrite"]) == 2
    assert "alternatives" in _one_line_error(capsys)
    (run / "keep.txt").write_text("mine")
    assert main(["train", str(cfg), "--overwrite", "--val-split", "null"]) == 0
    assert [r["type"] for r in _rows(run)].count("start") == 1  # a fresh log, not appended to
    assert not (run / "best.safetensors").exists() and (run / "keep.txt").read_text() == "mine"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fcnseg-faults-pwned",))


def test_backbone_weights_unsafe_or_damaged_is_one_line(tmp_path, data_root, capsys):
    import torch

    marker = Path("/tmp/fcnseg-faults-pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Evil()}, evil)
    good = tmp_path / "good.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:100])
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    cfg = str(_config(data_root, tmp_path / "r", model="fcn32s_vgg16"))
    assert main(["train", cfg, "--backbone-weights", str(evil)]) == 2
    line = _one_line_error(capsys)
    assert "refused: not a weights-only file" in line and "corrupt" not in line and "weights_only=False" not in line
    assert not marker.exists()
    assert main(["train", cfg, "--backbone-weights", str(trunc)]) == 2
    line = _one_line_error(capsys)
    assert str(trunc) in line and "corrupt or truncated backbone weights file" in line
    assert main(["train", cfg, "--backbone-weights", str(listed)]) == 2
    assert "not a state dict of tensors" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- 6. crafted and odd files
def _image(path: Path, size=(40, 56), seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from fcnseg.weights import save_weights
    from test_inference import random_fcn

    net = random_fcn(3, seed=1)  # predictions that vary over an image
    return save_weights(net.state_dict(), tmp_path_factory.mktemp("w") / "m.safetensors",
                        {"model": "fcn8s_lite0", "num_classes": 3, "class_names": ["a", "b", "c"],
                         "normalization": "imagenet", "dataset": "camvid"})


@pytest.mark.parametrize("raw, needle", [
    ("{not json", "metadata is not valid JSON"),
    ("[1,2]", "metadata is list JSON; expected an object"),
    ('"text"', "metadata is str JSON; expected an object"),
    ('{"model": "fcn8s_lite0", "num_classes": 3, "normalization": {"a": 1}}', "normalization in its metadata"),
    ('{"model": "fcn8s_lite0", "num_classes": 3, "class_names": 5}', "class_names in its metadata"),
    ('{"model": "fcn8s_lite0", "num_classes": 3, "options": [1]}', "options in its metadata"),
])
def test_crafted_safetensors_metadata_is_one_line(tmp_path, weights, capsys, raw, needle):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(weights)), str(bad), metadata={"fcnseg": raw})
    img = _image(tmp_path / "in" / "a.png")
    for argv in (["predict", "--model", str(bad), str(img), "-o", str(tmp_path / "out")],
                 ["eval", "--model", str(bad), "--root", str(tmp_path)],
                 ["export", "--model", str(bad), "-o", str(tmp_path / "m.onnx")],
                 # --init-from reads only the tensors, but the file's metadata must still parse
                 ["train", "--init-from", str(bad), "--run-dir", str(tmp_path / "run")][:5 if "JSON" in needle else 0]):
        if not argv:
            continue
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert str(bad) in line and needle in line, (argv, line)
    assert not (tmp_path / "run").exists()


def test_torchscript_pt_from_export_is_predicted_with_its_metadata(tmp_path, weights, capsys):
    import numpy as np
    from PIL import Image

    ts = tmp_path / "m.pt"
    assert main(["export", "-m", str(weights), "-f", "torchscript", "-o", str(ts), "--no-check"]) == 0
    img = _image(tmp_path / "in" / "a.png", size=(90, 122))
    assert main(["predict", "--model", str(ts), str(img), "-o", str(tmp_path / "ts")]) == 0
    assert main(["predict", "--model", str(weights), str(img), "-o", str(tmp_path / "ref")]) == 0
    got = np.array(Image.open(tmp_path / "ts" / "a.png"))
    ref = np.array(Image.open(tmp_path / "ref" / "a.png"))
    assert got.shape == (90, 122) and len(np.unique(ref)) > 1 and (got == ref).mean() > 0.99
    capsys.readouterr()
    # where a training checkpoint is needed, the archive is named for what it is
    assert main(["train", "--init-from", str(ts), "--run-dir", str(tmp_path / "run")]) == 2
    line = _one_line_error(capsys)
    assert "a TorchScript archive" in line and "fcnseg predict --model" in line


def test_recursive_glob_does_not_follow_a_symlink_loop(tmp_path, weights, capsys):
    root = tmp_path / "photos"
    _image(root / "a.png")
    _image(root / "sub" / "b.png", seed=1)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "sub" / "loop2").symlink_to(root / "sub", target_is_directory=True)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(weights), f"{root}/**/*.png", "-o", str(out), "-q"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "sub/b.png"]


def test_looping_file_named_directly_is_one_failed_input(tmp_path, weights, capsys):
    good = _image(tmp_path / "good.png")
    loop = tmp_path / "loop.png"
    loop.symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(loop)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(weights), str(loop), str(good), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "loop.png" in err and "symbolic links" in err
    assert (out / "good.png").is_file()


def test_camvid_out_of_range_label_names_camvids_void_value(tmp_path):
    import numpy as np
    from PIL import Image

    from fcnseg.data import get_dataset

    root = _write_camvid(tmp_path / "camvid", n_train=1, n_val=0)
    lab = root / "trainannot" / "000.png"
    arr = np.array(Image.open(lab))
    arr[0, 1] = 12
    Image.fromarray(arr).save(lab)
    with pytest.raises(UserError, match=r"label value 12 out of range; expected 0\.\.10 or 11 \(camvid's void"):
        get_dataset("camvid", root, "train").load_raw(0)


# ---------------------------------------------------------------------------- 7. progress
def test_tiled_prediction_reports_every_tile(weights):
    import numpy as np

    from fcnseg.inference import load_model

    model = load_model(weights, tile=64, overlap=32)  # small windows: fast
    img = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    grid = model.tile_grid(150, 200)
    assert grid is not None and len(grid) > 1
    calls: list[int] = []
    lab = model.predict(img, progress=calls.append)
    assert calls == [1] * len(grid) and lab.shape == (150, 200)


def test_predict_cli_shows_tile_progress_of_a_large_image(tmp_path, weights, monkeypatch):
    import tqdm as tqdm_mod

    bars: list[dict] = []
    real = tqdm_mod.tqdm

    class Recording(real):
        def __init__(self, *a, **k):
            k["disable"] = False  # as on a terminal
            super().__init__(*a, **k)
            bars.append({"unit": k.get("unit"), "total": k.get("total"), "bar": self})

    monkeypatch.setattr(tqdm_mod, "tqdm", Recording)
    img = _image(tmp_path / "big.png", size=(150, 200))
    assert main(["predict", "--model", str(weights), str(img), "--tile", "64", "--overlap", "32",
                 "-o", str(tmp_path / "o")]) == 0
    tiles = [b for b in bars if b["unit"] == "tile"]
    assert len(tiles) == 1 and tiles[0]["total"] > 1 and tiles[0]["bar"].n == tiles[0]["total"]


def test_large_image_note_and_max_pixels(tmp_path, weights, capsys):
    img = _image(tmp_path / "in" / "a.png", size=(40, 56))  # 2240 pixels
    out = str(tmp_path / "o")
    assert main(["predict", "--model", str(weights), str(img), "-o", out, "--max-pixels", "2000", "-q"]) == 0
    err = capsys.readouterr().err
    assert "DecompressionBomb" not in err and "Traceback" not in err
    notes = [ln for ln in err.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "2,240 pixels, above the 2,000-pixel limit" in notes[0] and "--max-pixels" in notes[0]
    assert main(["predict", "--model", str(weights), str(img), "-o", out, "--max-pixels", "1000", "-q"]) == 1
    err = capsys.readouterr().err
    assert "decompression bomb" in err and "--max-pixels 2240" in err and "Traceback" not in err
    assert main(["predict", "--model", str(weights), str(img), "-o", out, "--max-pixels", "0"]) == 2
    assert "--max-pixels must be >= 1" in _one_line_error(capsys)
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS == 89478485  # the limit held for that command only


def test_library_pipeline_takes_max_pixels_and_shows_tiles(tmp_path, weights, monkeypatch):
    """The same through Segmenter.predict_files (the library behind fcnseg predict): max_pixels holds
    for that call only, and a tiled image gets its tile bar."""
    import tqdm as tqdm_mod
    from PIL import Image

    from fcnseg.inference import load_model

    model = load_model(weights, tile=64, overlap=32)
    small = _image(tmp_path / "in" / "a.png", size=(40, 56))  # 2240 pixels
    errors: list[str] = []
    res = model.predict_files([small], tmp_path / "o1", max_pixels=1000, shard=None,
                              on_error=lambda p, m: errors.append(m))
    assert not res.written and len(errors) == 1 and "decompression bomb" in errors[0]
    assert Image.MAX_IMAGE_PIXELS == 89478485
    with pytest.raises(UserError, match="max_pixels must be >= 1"):
        model.predict_files([small], tmp_path / "o0", max_pixels=0, shard=None)
    bars: list[dict] = []
    real = tqdm_mod.tqdm

    class Recording(real):
        def __init__(self, *a, **k):
            k["disable"] = False
            super().__init__(*a, **k)
            bars.append({"unit": k.get("unit"), "total": k.get("total"), "bar": self})

    monkeypatch.setattr(tqdm_mod, "tqdm", Recording)
    big = _image(tmp_path / "in" / "big.png", size=(150, 200))
    res = model.predict_files([big], tmp_path / "o2", progress=True, shard=None)
    tiles = [b for b in bars if b["unit"] == "tile"]
    assert len(res.written) == 1 and len(tiles) == 1 and tiles[0]["bar"].n == tiles[0]["total"] > 1


def test_validation_during_training_shows_progress(tmp_path, data_root, capsys, monkeypatch):
    from fcnseg import evaluate as evaluate_mod

    seen = []
    real = evaluate_mod.evaluate

    def spy(*a, **k):
        seen.append(k.get("progress"))
        return real(*a, **k)

    monkeypatch.setattr(evaluate_mod, "evaluate", spy)
    run = tmp_path / "v"
    assert main(["train", str(_config(data_root, run, epochs=1, max_iters=1)), "--progress", "true"]) == 0
    assert seen and all(seen)
    assert "eval val" in capsys.readouterr().err


def test_checkpoint_write_failure_mid_run_is_one_line_and_keeps_the_last_good(tmp_path, data_root, capsys,
                                                                               monkeypatch):
    import errno

    from fcnseg.training import checkpoint, engine

    real = checkpoint.save_checkpoint
    calls = []

    def disk_full_after_first(state, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path)

    monkeypatch.setattr(engine, "save_checkpoint", disk_full_after_first)
    run = tmp_path / "full"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line and "last good checkpoint" in line and "(step 1)" in line
    assert checkpoint.load_checkpoint(run / "last.pt")["position"]["step"] == 1
