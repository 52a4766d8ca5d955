"""The ``fcnseg`` entry point: help, version, the model list, and a closed stdout."""
from __future__ import annotations

import json
import subprocess
import sys

from fcnseg.cli.main import main
from fcnseg.models import list_models
from fcnseg.shipped import DEFAULT_MODEL


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("predict", "eval", "train", "bench", "export", "convert"):
        assert command in out


def test_models_lists_architectures_and_shipped_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert f"\n{name} " in out, name
    assert "camvid-fcn8s-lite0" in out and "fcn8s_lite0" in out
    assert f"\n{DEFAULT_MODEL} " in out and out.count("(default of predict, eval, demo)") == 1
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["architectures"]] == list_models()
    vgg = next(r for r in data["architectures"] if r["name"] == "fcn8s_vgg16")
    assert vgg["output_stride"] == 8 and vgg["receptive_field"] == 404 and vgg["num_classes"] == 21
    shipped = {r["name"]: r for r in data["shipped"]}
    assert shipped["camvid-fcn8s-lite0"]["num_classes"] == 11 and shipped["camvid-fcn8s-lite0"]["dataset"] == "camvid"
    assert [n for n, r in shipped.items() if r["default"]] == [DEFAULT_MODEL]


def test_closed_stdout_ends_quietly():
    """`fcnseg models | head -1`: no traceback when the reader goes away."""
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg.cli.main", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err


# --------------------------------------------------------------------------- one vocabulary
def _subparsers():
    import argparse

    from fcnseg.cli.main import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _option(p, flag):
    return next((a for a in p._actions if flag in a.option_strings), None)


def test_one_vocabulary_on_the_command_line():
    """--model, --batch-size, --json [PATH] and --device mean the same in every command."""
    for name, p in _subparsers().items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert "--arch" not in flags or _option(p, "--arch").dest == "model", name  # only as an alias
        assert "--batch" not in flags or _option(p, "--batch").dest == "batch_size", name
        device = _option(p, "--device")
        if device is not None:  # train's options default to its config's fields
            assert device.default == ("==SUPPRESS==" if name == "train" else "auto"), name
        js = _option(p, "--json")
        if js is not None:
            assert js.nargs == "?" and js.const == "-" and js.metavar == "PATH", name
    from fcnseg.training import TrainConfig

    assert TrainConfig().device == "auto"
    subs = _subparsers()
    for name in ("predict", "eval", "export", "bench", "demo", "convert"):
        assert _option(subs[name], "--model") is not None, name
    for name in ("predict", "eval", "bench"):
        assert _option(subs[name], "--batch-size") is not None, name
    for name in ("predict", "eval", "bench", "demo"):  # one --precision; eval keeps exact scores by default
        opt = _option(subs[name], "--precision")
        assert opt is not None and opt.dest == "precision", name
        assert tuple(opt.choices) == ("auto", "fp32", "bf16", "fp16", "int8"), name
        assert opt.default == ("fp32" if name == "eval" else None), name


def test_deprecated_spellings_still_parse():
    from fcnseg.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["convert", "x.caffemodel", "--arch", "fcn8s_vgg16", "--out", "o.safetensors"])
    assert args.model == "fcn8s_vgg16"
    args = parser.parse_args(["bench", "--model", "fcn8s_lite0", "--batch", "3", "--dtype", "bf16"])
    assert args.batch_size == 3 and args.precision == "bf16"


def test_json_to_stdout_or_to_a_file(tmp_path, capsys):
    from fcnseg.cli.main import main

    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "architectures" in listed
    assert main(["models", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == listed
    assert "RF = receptive field" in capsys.readouterr().out  # with a file, the table is still printed
