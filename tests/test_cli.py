"""The ``fcnseg`` entry point: help, version, the model list, and a closed stdout."""
from __future__ import annotations

import json
import subprocess
import sys

from fcnseg.cli.main import main
from fcnseg.models import list_models


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
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["architectures"]] == list_models()
    vgg = next(r for r in data["architectures"] if r["name"] == "fcn8s_vgg16")
    assert vgg["output_stride"] == 8 and vgg["receptive_field"] == 404 and vgg["num_classes"] == 21
    shipped = {r["name"]: r for r in data["shipped"]}
    assert shipped["camvid-fcn8s-lite0"]["num_classes"] == 11 and shipped["camvid-fcn8s-lite0"]["dataset"] == "camvid"


def test_closed_stdout_ends_quietly():
    """`fcnseg models | head -1`: no traceback when the reader goes away."""
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg.cli.main", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err
