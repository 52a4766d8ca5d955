"""The running average of the weights (``ema_decay``): the update rule with its warm-up,
what a run validates and ships, what its checkpoint serves, and an exact resume."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.cli.main import main
from fcnseg.training import load_checkpoint
from fcnseg.training.ema import WeightAverage, warmed_up_decay

sys.path.insert(0, str(Path(__file__).parent))
from test_training import _config, _rows  # noqa: E402


def test_update_rule_with_warm_up_and_buffers():
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.999, 90) == pytest.approx(0.91)
    assert warmed_up_decay(0.9, 10 ** 6) == 0.9
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(net, 0.5)
    expected = {k: v.clone().float() for k, v in net.state_dict().items()}  # the first update copies
    for step in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(step + 1.0)
        net.train()(torch.randn(4, 3))  # moves the BatchNorm running statistics
        n = ema.updates
        ema.update(net)
        if n == 0:
            expected = {k: v.clone().float() for k, v in net.state_dict().items()}
            continue
        d = warmed_up_decay(0.5, n)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
            else:
                expected[k] = v.clone()
    got = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k].float(), v.float(), atol=1e-5), k
    assert got["1.num_batches_tracked"] == net.state_dict()["1.num_batches_tracked"] == 6
    assert not torch.allclose(got["0.weight"], net.state_dict()["0.weight"])  # an average, not a copy
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)


def test_a_run_validates_and_ships_the_average(data_root, tmp_path):
    import fcnseg
    from fcnseg.weights import load_weights, read_meta

    run = tmp_path / "ema"
    cfg = _config(data_root, run, optimizer="adamw", lr=0.003, epochs=3, val_every=3, ema_decay=0.9)
    assert main(["train", str(cfg)]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["ema"]["updates"] == 12 and state["config"]["ema_decay"] == 0.9
    final = load_weights(run / "final.safetensors")[0]
    averaged, trained = state["ema"]["model"], state["model"]
    key = "score_fr.weight"
    assert torch.equal(final[key], averaged[key].float())
    assert not torch.allclose(final[key], trained[key].float(), atol=1e-4)  # the average differs from the last step
    assert read_meta(run / "final.safetensors")["provenance"]["recipe"]["ema_decay"] == 0.9
    # the checkpoint serves the average too, so eval/predict of last.pt match final.safetensors
    image = np.asarray(Image.open(data_root / "val" / "000.png").convert("RGB"))
    a = fcnseg.load_model(run / "last.pt", precision="fp32").predict(image, return_probs=True)[1]
    b = fcnseg.load_model(run / "final.safetensors", precision="fp32").predict(image, return_probs=True)[1]
    np.testing.assert_array_equal(a, b)
    # the logged validation is the average's score
    val = [r for r in _rows(run) if r["type"] == "val"][-1]
    from fcnseg.data import get_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.evaluate import evaluate

    net = fcnseg.load_model(run / "final.safetensors", precision="fp32").net
    scores = evaluate(net, get_dataset("camvid", str(data_root), "val", transform=eval_transforms("imagenet")),
                      progress=False).scores
    assert scores["mean_iou"] == pytest.approx(val["mean_iou"], abs=1e-9)


def test_resume_continues_the_average_exactly(data_root, tmp_path):
    full = tmp_path / "full"
    assert main(["train", str(_config(data_root, full, epochs=2, val_split=None, ema_decay=0.95))]) == 0
    split = tmp_path / "split"
    assert main(["train", str(_config(data_root, split, epochs=1, val_split=None, ema_decay=0.95))]) == 0
    assert main(["train", "--resume", str(split), "--epochs", "2"]) == 0
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 8
    for k, v in a["ema"]["model"].items():
        assert torch.equal(v, b["ema"]["model"][k]), k
