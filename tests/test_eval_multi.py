"""``fcnseg eval`` with multi-input (NYUD RGB-D, RGB + HHA) and two-head (SIFT Flow) nets.

The data sets are tiny synthetic ones in the true on-disk layouts (fixtures of
``test_data_nyud_siftflow.py``); the nets are the Lite0 forms with random score layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fcnseg.card import ModelCard
from fcnseg.cli.main import main
from fcnseg.data import get_dataset
from fcnseg.evaluate import evaluate
from fcnseg.models import get_model
from fcnseg.weights import save_weights

pytest.importorskip("scipy.io")
from test_data_nyud_siftflow import write_nyud, write_siftflow  # noqa: E402  (fixtures in the true layouts)


def random_weights(name: str, path: Path, dataset: str) -> tuple[nn.Module, Path]:
    """``name`` with random score layers (so it predicts more than one class), saved with metadata."""
    torch.manual_seed(0)
    net = get_model(name)
    for mod_name, mod in net.named_modules():
        if mod_name.split(".")[-1].startswith("score_"):
            nn.init.normal_(mod.weight, std=0.5)
    card = ModelCard.for_net(net, model=name, normalization="imagenet", dataset=dataset, trained=True)
    return net.eval(), save_weights(net.state_dict(), path, card.to_meta())


@pytest.mark.parametrize("name,modalities", [("fcn8s_lite0_rgbd", ("image", "depth")),
                                             ("fcn8s_lite0_rgb_hha", ("image", "hha"))])
def test_multi_input_model_on_nyud(name, modalities, tmp_path, capsys):
    root = tmp_path / "nyud"
    write_nyud(root, ids=("1", "2", "3"))
    net, weights = random_weights(name, tmp_path / "m.safetensors", "nyud")
    # the data set and the inputs it must read come from the model: no --dataset, no modalities option
    assert main(["eval", "--model", str(weights), "--root", str(root), "--json", str(tmp_path / "r.json"),
                 "--quiet", "--device", "cpu"]) == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["images"] == 2 and got["dataset"] == "nyud" and got["architecture"] == name
    expected = evaluate(net, get_dataset("nyud", root, "val", modalities=modalities), progress=False)
    assert got["confusion"] == expected.confusion.numpy().tolist()
    assert sum(1 for c in range(40) if expected.confusion.numpy()[:, c].sum()) > 1
    # without the extra input the net cannot run: a one-line error, not a traceback
    assert main(["eval", "--model", str(weights), "--root", str(root), "--quiet", "--device", "cpu",
                 "--dataset-option", "modalities=[image]"]) == 2
    err = capsys.readouterr().err
    assert f"needs the {modalities[1]!r} input" in err and "Traceback" not in err


def test_multi_input_model_on_a_data_set_without_depth(tmp_path, capsys):
    root = tmp_path / "sf"
    write_siftflow(root)
    assert main(["eval", "--model", "fcn8s_lite0_rgbd", "--dataset", "siftflow", "--root", str(root),
                 "--split", "trainval", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "reads rgb + depth but the siftflow data set gives RGB images only" in err
    assert len(err.strip().splitlines()) == 1


def test_two_head_model_on_siftflow(tmp_path, capsys):
    root = tmp_path / "sf"
    write_siftflow(root)
    net, weights = random_weights("fcn8s_lite0_multitask", tmp_path / "mt.safetensors", "siftflow")
    assert main(["eval", "--model", str(weights), "--root", str(root), "--split", "trainval",
                 "--json", str(tmp_path / "r.json"), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "head 'geo'" in out and "horizontal" in out
    got = json.loads((tmp_path / "r.json").read_text())
    expected = evaluate(net, get_dataset("siftflow", root, "trainval"), progress=False)
    assert got["confusion"] == expected.confusion.numpy().tolist()
    assert got["heads"]["geo"]["confusion"] == expected.heads["geo"][0].numpy().tolist()
    assert got["images"] == 2 and got["heads"]["geo"]["pixels"] > 0
