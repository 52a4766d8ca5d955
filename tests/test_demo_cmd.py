"""``fcnseg demo``: shipped samples, outputs and scores, and its refusal to run without trained weights."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import fcnseg.shipped as shipped_mod
from fcnseg.cli import demo_cmd
from fcnseg.cli.main import main
from fcnseg.imageio import read_label_png
from fcnseg.inference import shipped_weights_path
from fcnseg.models import get_model
from fcnseg.shipped import DEFAULT_MODEL
from fcnseg.weights import save_weights

SAMPLES = Path(demo_cmd.__file__).resolve().parent.parent / "samples" / "camvid"


def _save(path: Path, num_classes: int = 11, **provenance) -> Path:
    from fcnseg.viz import camvid_class_names, camvid_palette, voc_palette

    torch.manual_seed(0)
    net = get_model("fcn8s_lite0", num_classes)
    torch.nn.init.normal_(net.score_fr.weight, std=1.0)
    names = camvid_class_names() if num_classes == 11 else [f"c{i}" for i in range(num_classes)]
    pal = camvid_palette() if num_classes == 11 else voc_palette(num_classes)
    save_weights(net.state_dict(), path, {"model": "fcn8s_lite0", "num_classes": num_classes, "class_names": names,
                                          "palette": pal.tolist(), "normalization": "imagenet",
                                          "options": {"pretrained_backbone": True}, **provenance},
                 dtype=torch.float16)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("w") / "demo-test.safetensors")


def test_shipped_samples():
    images = sorted((SAMPLES / "images").glob("*.jpg"))
    labels = sorted((SAMPLES / "labels").glob("*.png"))
    assert 4 <= len(images) <= 5 and [p.stem for p in images] == [p.stem for p in labels]
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 1_000_000
    for im, lab in zip(images, labels):
        with Image.open(im) as a:
            assert a.size == (480, 360) and a.mode == "RGB"
        arr = read_label_png(lab)
        assert arr.shape == (360, 480) and arr.max() <= 11
    readme = (SAMPLES / "README").read_text()
    assert "CC BY-NC 4.0" in readme and "Brostow" in readme


def test_samples_are_unchanged_copies_of_camvid_val(shared_dir):
    val = shared_dir / "data" / "camvid"
    for im in (SAMPLES / "images").glob("*.jpg"):
        assert im.read_bytes() == (val / "val" / im.name).read_bytes()
        assert (SAMPLES / "labels" / f"{im.stem}.png").read_bytes() == \
            (val / "valannot" / f"{im.stem}.png").read_bytes()


@pytest.fixture(scope="module")
def demo_run(weights, tmp_path_factory) -> tuple[Path, str]:
    """One demo run shared by the tests below: (output folder, what it printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--model", str(weights), "--out", str(out)]) == 0
    return out, buf.getvalue()


def test_demo_writes_pictures_and_scores(demo_run):
    out, printed = demo_run
    stems = sorted(p.stem for p in (SAMPLES / "images").glob("*.jpg"))
    for stem in stems:
        lab = read_label_png(out / f"{stem}.png")
        assert lab.shape == (360, 480) and lab.max() <= 10
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.size == (480, 360)
        with Image.open(out / f"{stem}_figure.png") as im:
            assert im.width >= 3 * 480 and im.height > 360
    with Image.open(out / "demo.png") as im:
        assert im.width >= 3 * 320 and im.height >= len(stems) * 240
    m = re.search(r"mean IoU (\d+\.\d)%", printed)
    assert m and 0 <= float(m.group(1)) <= 100
    assert "pixel accuracy" in printed and "per-class IoU: Sky" in printed


def test_demo_says_when_the_model_was_trained_on_the_samples(demo_run, tmp_path, capsys):
    assert "note:" not in demo_run[1]  # no recipe recorded: nothing claimed
    path = _save(tmp_path / "tv.safetensors", recipe={"train_split": "trainval", "epochs": 1})
    assert main(["demo", "--model", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained on CamVid trainval, which holds these val frames" in out


def test_demo_scores_are_the_confusion_matrix_of_the_predictions(demo_run):
    from fcnseg.metrics import ConfusionMatrix

    out, printed = demo_run
    shown = float(re.search(r"mean IoU (\d+\.\d)%", printed).group(1))
    cm = ConfusionMatrix(11, ignore_index=11)
    for lab in (SAMPLES / "labels").glob("*.png"):
        cm.update(read_label_png(out / lab.name), read_label_png(lab))
    assert abs(100 * cm.compute()["mean_iou"] - shown) < 0.051


def test_missing_shipped_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shipped_mod, "WEIGHTS_DIR", tmp_path)  # an installation without the weights
    assert main(["demo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"shipped model '{DEFAULT_MODEL}' is not installed" in err
    assert not (tmp_path / "o" / "demo.png").exists()


def test_demo_refuses_untrained_and_wrong_models(tmp_path, capsys):
    assert main(["demo", "--model", "fcn8s_lite0", "--out", str(tmp_path / "o")]) == 2
    assert "untrained architecture" in capsys.readouterr().err
    voc = _save(tmp_path / "voc.safetensors", 21)
    assert main(["demo", "--model", str(voc), "--out", str(tmp_path / "o")]) == 2
    assert "CamVid (11 classes) but the model has 21" in capsys.readouterr().err


@pytest.mark.skipif(not shipped_weights_path(DEFAULT_MODEL).is_file(),
                    reason="the shipped default model's weights are not in this checkout")
def test_real_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    miou = float(re.search(r"mean IoU (\d+\.\d)%", out).group(1))
    assert miou > 30, out  # a trained CamVid model; an untrained one scores ~1%
    assert (tmp_path / "demo" / "demo.png").is_file()
