"""``fcnseg eval`` end to end on real CamVid val images, the evaluation loop, and bad-input exits."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import SHARED  # noqa: E402
from fcnseg.cli.main import main
from fcnseg.data import get_dataset
from fcnseg.evaluate import evaluate
from fcnseg.shipped import DEFAULT_MODEL

CAMVID = SHARED / "data" / "camvid"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder not found at {SHARED}")


@pytest.fixture()
def small_camvid(tmp_path) -> Path:
    """Three real val images, listed with SegNet-style absolute paths that must be resolved."""
    root = tmp_path / "camvid"
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    lines = []
    for ln in (CAMVID / "val.txt").read_text().splitlines()[:3]:
        img, lab = ln.split()
        shutil.copy(CAMVID / img, root / img)
        shutil.copy(CAMVID / lab, root / lab)
        lines.append(f"/SegNet/CamVid/{img} /SegNet/CamVid/{lab}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def label_histogram(root: Path) -> np.ndarray:
    ds = get_dataset("camvid", root, "val")
    counts = np.zeros(11, np.int64)
    for i in range(len(ds)):
        lab = ds[i]["label"]
        counts += np.bincount(lab[lab != 255], minlength=11)
    return counts


def test_eval_untrained_end_to_end(small_camvid, tmp_path, capsys):
    out_json, out_png = tmp_path / "r" / "scores.json", tmp_path / "cm.png"
    rc = main(["eval", "--model", "fcn32s_lite0", "--dataset", "camvid", "--root", str(small_camvid),
               "--split", "val", "--json", str(out_json), "--confusion", str(out_png), "--quiet",
               "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    for word in ("pixel acc", "mean acc", "mean IoU", "fw IoU", "Sky", "Bicyclist", "3 images"):
        assert word in out
    data = json.loads(out_json.read_text())
    assert {"pixel_acc", "mean_acc", "mean_iou", "fw_iou", "per_class", "confusion", "images",
            "skipped"} <= set(data)
    assert data["images"] == 3 and data["skipped"] == 0
    assert [c["class"] for c in data["per_class"]][:2] == ["Sky", "Building"]
    # an untrained FCN has zero score layers, so it predicts class 0 everywhere: the scores are
    # then fixed by the ground truth alone, which checks the whole pipeline independently
    hist = label_histogram(small_camvid)
    conf = np.array(data["confusion"])
    assert np.array_equal(conf[:, 0], hist) and conf[:, 1:].sum() == 0
    assert data["pixel_acc"] == pytest.approx(hist[0] / hist.sum())
    assert data["mean_acc"] == pytest.approx(1 / 11 if hist.all() else 1 / (hist > 0).sum())
    assert 0 <= data["mean_iou"] <= 1
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:4] == b"\x89PNG"
    # --json - : stdout is the JSON document alone (the "wrote" line of --confusion goes to stderr)
    rc = main(["eval", "--model", "fcn32s_lite0", "--dataset", "camvid", "--root", str(small_camvid),
               "--split", "val", "--json", "-", "--confusion", str(out_png), "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["images"] == 3 and f"wrote {out_png}" in captured.err


def test_eval_weights_and_checkpoint_files(small_camvid, tmp_path, capsys):
    from fcnseg.models import get_model
    from fcnseg.weights import save_weights

    torch.manual_seed(1)
    model = get_model("fcn32s_lite0", num_classes=11)
    nn.init.normal_(model.score_fr.weight, std=0.05)  # a model that predicts more than one class
    meta = {"model": "fcn32s_lite0", "num_classes": 11, "normalization": "imagenet", "options": {},
            "dataset": "camvid"}
    wpath = save_weights(model.state_dict(), tmp_path / "m.safetensors", meta)
    ds = get_dataset("camvid", small_camvid, "val")
    expected = evaluate(model, ds, progress=False).to_dict()
    # --dataset comes from the weights' metadata
    rc = main(["eval", "--model", str(wpath), "--root", str(small_camvid), "--json", str(tmp_path / "a.json"),
               "--quiet", "--batch-size", "2"])
    assert rc == 0
    got = json.loads((tmp_path / "a.json").read_text())
    assert got["confusion"] == expected["confusion"]
    assert len({c for c in range(11) if np.array(got["confusion"])[:, c].sum() > 0}) > 1

    ckpt_mod = pytest.importorskip("fcnseg.training.checkpoint")
    ckpt = ckpt_mod.save_checkpoint({"model": model.state_dict(), "config": {"model": "fcn32s_lite0",
                                     "num_classes": 11, "dataset": "camvid", "model_options": {}}},
                                    tmp_path / "last.pt")
    rc = main(["eval", "--model", str(ckpt), "--dataset", "camvid", "--root", str(small_camvid),
               "--json", str(tmp_path / "b.json"), "--quiet"])
    assert rc == 0
    assert json.loads((tmp_path / "b.json").read_text())["confusion"] == expected["confusion"]


def test_evaluate_batching_flip_and_limit(small_camvid):
    torch.manual_seed(2)
    from fcnseg.models import get_model

    model = get_model("fcn32s_lite0", num_classes=11)
    nn.init.normal_(model.score_fr.weight, std=0.05)
    ds = get_dataset("camvid", small_camvid, "val")
    one = evaluate(model, ds, progress=False, batch_size=1)
    two = evaluate(model, ds, progress=False, batch_size=2)
    assert np.array_equal(one.confusion.numpy(), two.confusion.numpy())
    assert one.confusion.total == label_histogram(small_camvid).sum()
    flipped = evaluate(model, ds, progress=False, flip=True, limit=1)
    assert flipped.num_images == 1
    assert ds.transform is None  # evaluate did not change the caller's data set


def test_eval_tta_equals_predict_tta(small_camvid, tmp_path, capsys):
    """`fcnseg eval --tta` scores exactly what `Segmenter.predict(tta=...)` (and `fcnseg predict
    --tta`) outputs: one TTA implementation behind both."""
    import fcnseg
    from fcnseg.metrics import ConfusionMatrix

    spec = "flip,scales=0.75,1"
    model = fcnseg.load_model("camvid-fcn8s-lite0", optimize=False)  # eval runs the plain module too
    ds = get_dataset("camvid", small_camvid, "val")
    cm = ConfusionMatrix(11, ignore_index=ds.ignore_index)
    for i in range(len(ds)):
        raw = ds.load_raw(i)
        cm.update(model.predict(raw["image"], tta=spec).astype(np.int64), raw["label"].astype(np.int64))
    out = tmp_path / "tta.json"
    assert main(["eval", "--model", "camvid-fcn8s-lite0", "--dataset", "camvid", "--root", str(small_camvid),
                 "--tta", spec, "--json", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["tta"] == spec and data["flip"] is True
    np.testing.assert_array_equal(np.asarray(data["confusion"]), cm.numpy())
    plain = evaluate(model.net, ds, progress=False)
    assert not np.array_equal(plain.confusion.numpy(), cm.numpy())  # the views changed something
    assert main(["eval", "--model", "camvid-fcn8s-lite0", "--dataset", "camvid", "--root", str(small_camvid),
                 "--tta", "flip,scales=0"]) == 2
    assert "scale" in capsys.readouterr().err


class ConstantHeads(nn.Module):
    """Predicts class 1 of the semantic head and class 2 of the geometric head everywhere."""

    main_head = "sem"
    num_classes = 33
    normalization = "caffe"

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n, _, h, w = x.shape
        sem = torch.zeros(n, 33, h, w)
        sem[:, 1] = 1
        geo = torch.zeros(n, 3, h, w)
        geo[:, 2] = 1
        return {"sem": sem + self.dummy, "geo": geo}


def test_evaluate_scores_extra_heads(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    from fcnseg.data.siftflow import SUBDIR

    for d in ("Images", "SemanticLabels", "GeoLabels"):
        (tmp_path / d / SUBDIR).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "Images" / SUBDIR / "a.jpg")
    sem = np.full((8, 8), 2.0)
    sem[0] = 0  # void
    geo = np.full((8, 8), 3, np.int32)
    geo[:4] = 1
    scipy_io.savemat(tmp_path / "SemanticLabels" / SUBDIR / "a.mat", {"S": sem})
    scipy_io.savemat(tmp_path / "GeoLabels" / SUBDIR / "a.mat", {"S": geo})
    (tmp_path / "test.txt").write_text("a\n")
    res = evaluate(ConstantHeads(), get_dataset("siftflow", tmp_path, "test"), progress=False)
    assert res.confusion.numpy()[1, 1] == 56 and res.confusion.total == 56
    geo_cm, names = res.heads["geo"]
    assert names == ["sky", "horizontal", "vertical"]
    assert geo_cm.numpy()[2, 2] == 32 and geo_cm.numpy()[0, 2] == 32
    assert res.to_dict()["heads"]["geo"]["pixel_acc"] == pytest.approx(0.5)
    # TTA averages each head's probabilities separately (constant heads: same answer)
    tta = evaluate(ConstantHeads(), get_dataset("siftflow", tmp_path, "test"), progress=False,
                   tta="flip,scales=0.5,1")
    assert np.array_equal(tta.confusion.numpy(), res.confusion.numpy())
    assert np.array_equal(tta.heads["geo"][0].numpy(), geo_cm.numpy())


def test_bad_input_exit_codes(small_camvid, tmp_path, capsys):
    base = ["eval", "--model", "fcn32s_lite0", "--dataset", "camvid", "--quiet"]
    assert main(base + ["--root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: CamVid root folder not found" in capsys.readouterr().err
    assert main(base + ["--root", str(small_camvid), "--split", "test"]) == 2
    assert "test.txt: CamVid split list not found" in capsys.readouterr().err
    assert main(["eval", "--model", "no_such_model", "--dataset", "camvid", "--root", str(small_camvid)]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(base + ["--root", str(small_camvid), "--dataset", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err

    # a corrupt image and an empty list
    bad = sorted((small_camvid / "val").iterdir())[1]
    bad.write_bytes(b"\xff\xd8 truncated")
    (small_camvid / "empty.txt").write_text("")
    assert main(base + ["--root", str(small_camvid), "--split", "empty"]) == 2
    assert "empty.txt: split list is empty" in capsys.readouterr().err
    assert main(base + ["--root", str(small_camvid)]) == 2
    err = capsys.readouterr().err
    assert f"{bad.name}: not an image file" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert main(base + ["--root", str(small_camvid), "--skip-bad", "--json", str(tmp_path / "s.json")]) == 0
    assert "skipped 1 of 3 images" in capsys.readouterr().err
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["images"] == 2 and data["skipped"] == 1 and bad.name in data["skipped_files"][0]

    # a weights file for another class count
    from fcnseg.models import get_model
    from fcnseg.weights import save_weights

    w = save_weights(get_model("fcn32s_lite0", num_classes=21).state_dict(), tmp_path / "voc.safetensors",
                     {"model": "fcn32s_lite0", "num_classes": 21})
    assert main(base + ["--root", str(small_camvid), "--model", str(w)]) == 2
    assert "predicts 21 classes but the data set has 11" in capsys.readouterr().err
    assert main(base + ["--root", str(small_camvid), "--confusion", str(tmp_path / "cm.txt")]) == 2
    assert "--confusion must end in" in capsys.readouterr().err


def test_eval_outputs_checked_first_and_scores_never_lost(small_camvid, tmp_path, capsys, monkeypatch):
    import errno

    base = ["eval", "--model", "fcn32s_lite0", "--dataset", "camvid", "--root", str(small_camvid),
            "--device", "cpu", "--limit", "1"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(base + ["--json", str(blocker / "s.json")]) == 2
    captured = capsys.readouterr()
    assert "--json" in captured.err and "is a file" in captured.err and "Traceback" not in captured.err
    assert "pixel acc" not in captured.out  # refused before the evaluation
    # a write that fails at the end (disk full): the scores are printed, then one line, exit 2
    target = tmp_path / "full" / "s.json"
    real = Path.write_text

    def full_disk(self, *a, **k):
        if self == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(base + ["--json", str(target)]) == 2
    captured = capsys.readouterr()
    assert "pixel acc" in captured.out and "mean IoU" in captured.out
    err = [ln for ln in captured.err.splitlines() if ln.strip() and "untrained architecture" not in ln]
    assert len(err) == 1 and "No space left on device" in err[0] and "scores are printed above" in err[0]
    # without --quiet, the bar stays quiet when stderr is not a terminal (as in predict)
    monkeypatch.undo()
    assert main(base) == 0
    assert "img/s" not in capsys.readouterr().err


def test_eval_precision_fp32_by_default_and_bf16_on_request(small_camvid, tmp_path):
    """eval scores exact fp32 unless asked; --precision bf16 scores the bf16 path (close, not equal)."""
    runs = {}
    for extra in ([], ["--precision", "bf16"]):
        out = tmp_path / f"{len(runs)}.json"
        assert main(["eval", "--model", "camvid-fcn8s-lite0", "--dataset", "camvid", "--root", str(small_camvid),
                     "--json", str(out), "--quiet", *extra]) == 0
        runs[tuple(extra)] = json.loads(out.read_text())
    fp32, bf16 = runs[()], runs[("--precision", "bf16")]
    import fcnseg
    from fcnseg.data import get_dataset
    from fcnseg.evaluate import evaluate

    exact = evaluate(fcnseg.load_model("camvid-fcn8s-lite0", precision="fp32", optimize=False).net,
                     get_dataset("camvid", small_camvid, "val"), progress=False)
    np.testing.assert_array_equal(np.asarray(fp32["confusion"]), exact.confusion.numpy())
    assert abs(bf16["mean_iou"] - fp32["mean_iou"]) < 0.01
    assert not np.array_equal(np.asarray(bf16["confusion"]), np.asarray(fp32["confusion"]))


def test_eval_under_torchrun_equals_one_process(small_camvid, tmp_path, capsys):
    """2 CPU processes (gloo): each scores every 2nd image, the matrices are summed, rank 0 reports,
    naming the file the other rank skipped."""
    (small_camvid / "val" / "broken.png").write_bytes(b"not a png")  # the 4th image: rank 1's
    with (small_camvid / "val.txt").open("a") as f:
        f.write("val/broken.png valannot/broken.png\n")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    args = ["eval", "--model", "camvid-fcn8s-lite0", "--root", str(small_camvid), "--split", "val",
            "--quiet", "--device", "cpu", "--precision", "fp32", "--skip-bad"]
    assert main([*args, "--json", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
                          "-m", "fcnseg.cli.main", *args, "--json", str(two)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("mean IoU") == 1 and "3 images" in run.stdout  # one report, all images
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["images"] == b["images"] == 3
    assert a["skipped_files"] == b["skipped_files"] and len(a["skipped_files"]) == 1
    assert "broken.png" in b["skipped_files"][0]
    ca, cb = np.array(a["confusion"]), np.array(b["confusion"])
    assert ca.sum() == cb.sum() > 0
    # the same images scored (frozen graphs may flip a near-tie pixel: rounding only)
    assert np.abs(ca - cb).sum() <= 1e-4 * ca.sum() and abs(a["mean_iou"] - b["mean_iou"]) < 1e-3


def test_eval_defaults_to_the_shipped_default_model(small_camvid, tmp_path):
    """No --model (and no --dataset): the shipped default model, on the data set its weights record."""
    out = tmp_path / "r.json"
    assert main(["eval", "--root", str(small_camvid), "--split", "val", "--limit", "1", "--quiet",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model"] == DEFAULT_MODEL and r["dataset"] == "camvid" and r["images"] == 1
