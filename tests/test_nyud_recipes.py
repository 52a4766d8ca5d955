"""Each NYUD recipe in configs/ feeds its net the reference inputs, in training and in validation.

The bug this guards against: the HHA recipe trained and scored the plain net on RGB, and the
RGB-D nets got depth in metres instead of log(depth in mm) - 7.844 (``nyud_layers.py``). One
training step (and one validation image) of every ``configs/nyud-*.yaml`` runs on a tiny
NYUD-layout fixture; a forward pre-hook records what the net actually received, which is
compared with the reference preprocessing computed here from the fixture's files (not with
fcnseg's own transforms). To keep this fast, the recipe's VGG16 net is replaced by a 1x1
convolution carrying the real net's interface (its ``modalities``, ``normalization``, input
channels, built on the meta device): what the net is fed depends only on that interface.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnseg.models as models
from fcnseg.training import load_config, train

sys.path.insert(0, str(Path(__file__).parent))
from test_data_nyud_siftflow import write_nyud  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("nyud-*.yaml"))
MEAN_BGR = np.array((116.190, 97.203, 92.318), np.float32)
MEAN_HHA = np.array((132.431, 94.076, 118.477), np.float32)
MEAN_LOGD = 7.844


def reference_inputs(root: Path, i: str) -> dict[str, np.ndarray]:
    """The reference data layer's tops for image ``i``, as C x H x W float32."""
    color = np.asarray(Image.open(root / f"data/images/img_{i}.png"), np.float32)[:, :, ::-1] - MEAN_BGR
    mm = np.asarray(Image.open(root / f"data/depth/img_{i}.png")).astype(np.float32)
    depth = np.where(mm > 0, np.log(np.maximum(mm, 1e-6)) - MEAN_LOGD, 0.0).astype(np.float32)  # 0 = missing
    hha = np.asarray(Image.open(root / f"data/hha/img_{i}.png"), np.float32) - MEAN_HHA
    return {"color": color.transpose(2, 0, 1), "depth": depth[None], "hha": hha.transpose(2, 0, 1)}


#: what each recipe's net must be fed: the net's input name -> reference top
EXPECTED = {
    "nyud-fcn32s-rgb": {"": "color"},
    "nyud-fcn32s-hha": {"": "hha"},
    "nyud-fcn32s-rgbd": {"rgb": "color", "depth": "depth"},
    "nyud-fcn16s-rgbd": {"rgb": "color", "depth": "depth"},
    "nyud-fcn32s-rgb-hha": {"rgb": "color", "hha": "hha"},
    "nyud-fcn16s-rgb-hha": {"rgb": "color", "hha": "hha"},
}


class StandIn(nn.Module):
    """A 1x1 convolution with the interface of ``real`` (a net on the meta device)."""

    def __init__(self, real: nn.Module) -> None:
        from fcnseg.complexity import input_channels

        super().__init__()
        modalities = getattr(real, "modalities", None)
        if modalities:
            self.modalities = dict(modalities)
        self.normalization = real.normalization
        self.num_classes = real.num_classes
        self.score_fr = nn.Conv2d(sum(modalities.values()) if modalities else input_channels(real),
                                  real.num_classes, 1)

    def forward(self, x):
        if isinstance(x, dict):
            x = torch.cat([x[m] for m in self.modalities], dim=1)
        return self.score_fr(x)


def test_every_nyud_recipe_is_checked():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_nyud_recipe_feeds_the_reference_inputs(config, tmp_path, monkeypatch):
    pytest.importorskip("scipy.io")
    root = tmp_path / "nyud"
    write_nyud(root, ids=("1", "2"), h=20, w=28)
    refs = {i: reference_inputs(root, i) for i in ("1", "2")}
    seen: list[tuple[bool, dict[str, torch.Tensor]]] = []
    real = models.get_model

    def recording_get_model(*args, **kwargs):
        with torch.device("meta"):
            net = StandIn(real(*args, **kwargs))
        net = net.to_empty(device="cpu")
        nn.init.normal_(net.score_fr.weight, std=0.01)
        nn.init.zeros_(net.score_fr.bias)

        def hook(module, inputs):
            x = inputs[0]
            got = ({k: v.detach().float().clone() for k, v in x.items()} if isinstance(x, dict)
                   else {"": x.detach().clone()})
            seen.append((module.training, got))

        net.register_forward_pre_hook(hook)
        return net

    monkeypatch.setattr(models, "get_model", recording_get_model)
    cfg = load_config(config, {"data_root": str(root), "init_from": None, "train_split": "train", "val_split": "val",
                               "max_iters": 1, "epochs": 1, "val_every": 1, "val_every_iters": None,
                               "workers": 0, "progress": False, "threads": 1, "run_dir": str(tmp_path / "run"),
                               "checkpoint_every": 1, "deterministic": False})
    summary = train(cfg)
    assert summary["status"] == "done"
    expected = EXPECTED[config.stem]
    assert [training for training, _ in seen] == [True, False]  # one training step, one validation image
    for training, got in seen:
        assert set(got) == set(expected)
        ids = ("1",) if training else ("2",)  # train.txt holds image 1, val.txt image 2
        for name, top in expected.items():
            want = torch.from_numpy(np.ascontiguousarray(refs[ids[0]][top]))[None]
            assert got[name].shape == want.shape, (name, got[name].shape)
            torch.testing.assert_close(got[name], want, atol=1e-4, rtol=1e-5)
    # the weights file's card says what the net was fed, so eval/predict feed the same
    from fcnseg.card import ModelCard
    from fcnseg.weights import read_meta

    card = ModelCard.from_meta(read_meta(tmp_path / "run" / "best.safetensors"), source="best")
    keys = {"color": "image", "depth": "depth", "hha": "hha"}
    assert card.sample_keys == [keys[t] for t in expected.values()]
    for spec in card.inputs:
        if spec.key == "hha":
            assert spec.hha_mean == pytest.approx(MEAN_HHA.tolist())
        if spec.key == "depth":
            assert spec.depth_log_mean == pytest.approx(MEAN_LOGD)
        if spec.key == "image":
            assert spec.normalization == "caffe-nyud"
