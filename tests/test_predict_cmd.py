"""``fcnseg predict``: outputs, folder structure, per-file failures, exit codes, the entry point."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg.cli.main import main
from fcnseg.imageio import read_label_png
from fcnseg.inference import load_model
from fcnseg.models import get_model
from fcnseg.preprocess import normalize
from fcnseg.weights import save_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A shipped-format weights file: fcn8s_lite0, 11 classes, random non-zero score layers, fp16."""
    from fcnseg.viz import camvid_class_names, camvid_palette

    torch.manual_seed(0)
    net = get_model("fcn8s_lite0", 11)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        nn.init.normal_(getattr(net, name).weight, std=0.05)
    calibrate_batchnorm(net)
    path = tmp_path_factory.mktemp("w") / "cam.safetensors"
    save_weights(net.state_dict(), path, {"model": "fcn8s_lite0", "num_classes": 11,
                                          "class_names": camvid_class_names(), "palette": camvid_palette().tolist(),
                                          "normalization": "imagenet", "options": {}}, dtype=torch.float16)
    return path


def calibrate_batchnorm(net: nn.Module) -> None:
    """Estimate BatchNorm statistics on a few pictures so the random trunk's activations do not
    fade away (see ``random_fcn`` in test_inference.py)."""
    from fcnseg.preprocess import normalize

    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.stack([normalize(picture(96, 128, s), "imagenet") for s in range(4)]))
    net.eval()


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 127 + 80 * np.sin(xx / 9.0 + seed)[..., None] * np.cos(yy / 13.0)[..., None] + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def images(tmp_path) -> Path:
    """in/a.jpg, in/b.png (another size), in/sub/c.png, in/readme.txt."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(picture(48, 64, 1)).save(root / "a.jpg", quality=95)
    Image.fromarray(picture(40, 56, 2)).save(root / "b.png")
    Image.fromarray(picture(48, 64, 3)).save(root / "sub" / "c.png")
    (root / "readme.txt").write_text("not an image")
    return root


def test_folder_outputs_keep_structure_and_match_the_api(weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(images), "--model", str(weights), "--out", str(out), "--overlay", "--probs",
               "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert re.search(r"wrote 3 label map\(s\) to .* in [0-9.]+ s, [0-9.]+ images/s", err), err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "a_overlay.png", "a_probs.npy", "b.png", "b_overlay.png", "b_probs.npy",
                       "sub/c.png", "sub/c_overlay.png", "sub/c_probs.npy"]
    model = load_model(weights)
    for stem, src in [("a", images / "a.jpg"), ("b", images / "b.png"), ("sub/c", images / "sub" / "c.png")]:
        labels, probs = model.predict(src, return_probs=True)
        got = read_label_png(out / f"{stem}.png")
        np.testing.assert_array_equal(got, labels)
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.array(im.getpalette()[:33]).reshape(11, 3), model.palette)
        p = np.load(out / f"{stem}_probs.npy")
        assert p.dtype == np.float32 and p.shape == (11, *labels.shape)
        np.testing.assert_allclose(p, probs, atol=1e-5)
        with Image.open(out / f"{stem}_overlay.png") as im:
            assert im.size == labels.shape[::-1] and im.mode == "RGB"
    assert len(np.unique(read_label_png(out / "a.png"))) > 1


def test_eager_flag_runs_the_plain_module(weights, images, tmp_path, capsys):
    out = tmp_path / "eager"
    assert main(["predict", str(images / "b.png"), "--model", str(weights), "--out", str(out), "--probs",
                 "--eager", "--quiet"]) == 0, capsys.readouterr().err
    labels, probs = load_model(weights, optimize=False).predict(images / "b.png", return_probs=True)
    np.testing.assert_array_equal(read_label_png(out / "b.png"), labels)
    np.testing.assert_array_equal(np.load(out / "b_probs.npy"), probs)  # bit for bit: the same module


def test_single_files_and_globs(weights, images, tmp_path):
    out = tmp_path / "o"
    assert main(["predict", str(images / "a.jpg"), str(images / "**" / "*.png"), "--model", str(weights),
                 "--out", str(out), "--quiet"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["a.png", "b.png", "sub/c.png"]


def test_some_files_fail_exit_1_rest_written(weights, images, tmp_path, capsys):
    (images / "zero.jpg").write_bytes(b"")
    data = (images / "b.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])
    (images / "fake.png").write_text("hello")
    out = tmp_path / "out"
    rc = main(["predict", str(images), "--model", str(weights), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    for name in ("zero.jpg", "cut.png", "fake.png"):
        assert name in err
    assert "3 image(s) failed" in err and "Traceback" not in err
    assert sorted(p.name for p in out.rglob("*.png")) == ["a.png", "b.png", "c.png"]


def test_user_errors_exit_2_and_process_nothing(weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["predict", str(empty), "--model", str(weights), "--out", str(out)], "no image files"),
        (["predict", str(tmp_path / "missing.jpg"), "--model", str(weights), "--out", str(out)], "no such file"),
        (["predict", str(images), "--model", "no-such-model", "--out", str(out)], "unknown model"),
        (["predict", str(images), "--model", str(tmp_path / "nope.safetensors"), "--out", str(out)],
         "no such model file"),
        (["predict", str(images), "--model", str(weights), "--num-classes", "21", "--out", str(out)],
         "has 11 classes but num_classes=21"),
        (["predict", str(images), "--model", str(weights), "--out", str(out), "--tta", "rotate"], "unknown item"),
        (["predict", str(images), "--model", str(weights), "--out", str(out), "--batch-size", "0"], "batch-size"),
        (["predict", str(images), "--model", str(weights), "--out", str(out), "--tile", "big"], "--tile"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # not even an empty output folder is left behind


def test_unwritable_output_folder(weights, images, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["predict", str(images), "--model", str(weights), "--out", str(blocker)]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert main(["predict", str(images), "--model", str(weights), "--out", str(blocker / "sub")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    if os.name == "posix" and os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert main(["predict", str(images), "--model", str(weights), "--out", str(locked)]) == 2
            assert "not writable" in capsys.readouterr().err
        finally:
            locked.chmod(0o700)


def test_outputs_are_not_reread_as_inputs(weights, images, tmp_path):
    out = images / "results"
    for _ in range(2):  # the second run must not pick up results/*.png as inputs
        assert main(["predict", str(images), "--model", str(weights), "--out", str(out), "--overlay",
                     "--quiet"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if "overlay" not in p.name) == \
        ["a.png", "b.png", "sub/c.png"]


def test_untrained_architecture_warns_on_one_line(images, tmp_path, capsys):
    assert main(["predict", str(images / "a.jpg"), "--model", "fcn32s_lite0", "--num-classes", "3",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: model 'fcn32s_lite0' is an untrained architecture" in err
    assert read_label_png(tmp_path / "o" / "a.png").shape == (48, 64)


def test_tile_and_tta_options(weights, tmp_path):
    src = tmp_path / "wide.png"
    Image.fromarray(picture(40, 1300)).save(src)
    model = load_model(weights)
    runs = {"whole": ["--tile", "0"], "tiled": ["--tile", "160", "--probs"], "tta": ["--tta", "flip"]}
    for name, extra in runs.items():
        assert main(["predict", str(src), "--model", str(weights), "--out", str(tmp_path / name), "--quiet",
                     *extra]) == 0
    whole = read_label_png(tmp_path / "whole" / "wide.png")
    tiled = read_label_png(tmp_path / "tiled" / "wide.png")
    assert (whole == tiled).mean() > 0.999  # exact but for float ties
    probs = np.load(tmp_path / "tiled" / "wide_probs.npy")  # written through a memory map
    assert probs.shape == (11, 40, 1300)
    assert (probs.argmax(0) == tiled).mean() > 0.999
    np.testing.assert_array_equal(read_label_png(tmp_path / "tta" / "wide.png"), model.predict(src, tta="flip"))


def test_onnx_backend(weights, images, tmp_path):
    pytest.importorskip("onnxruntime")
    import warnings

    net = load_model(weights).net
    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(onnx_path), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N", 2: "H", 3: "W"}})
    out = tmp_path / "onnx-out"
    assert main(["predict", str(images), "--model", str(onnx_path), "--backend", "onnxruntime",
                 "--out", str(out), "--quiet"]) == 0
    ref = load_model(weights).predict(images / "a.jpg")
    assert (read_label_png(out / "a.png") == ref).mean() > 0.99
    assert main(["predict", str(images), "--model", str(weights), "--backend", "onnxruntime",
                 "--out", str(out)]) == 2


def test_installed_entry_point(weights, images, tmp_path):
    exe = Path(sys.executable).parent / "fcnseg"
    exe = str(exe) if exe.exists() else shutil.which("fcnseg")
    if exe is None:
        pytest.skip("the fcnseg entry point is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([exe, "predict", str(images / "a.jpg"), "--model", str(weights), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "a.png").is_file()
    bad = subprocess.run([exe, "predict", str(tmp_path / "empty-nothing"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such file" in bad.stderr


def test_outputs_have_ordinary_permissions(weights, images, tmp_path):
    out = tmp_path / "perm"
    old = os.umask(0o022)
    try:
        assert main(["predict", str(images / "a.jpg"), "--model", str(weights), "--out", str(out), "--overlay",
                     "--probs", "--quiet"]) == 0
    finally:
        os.umask(old)
    for name in ("a.png", "a_overlay.png", "a_probs.npy"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    assert not list(out.glob(".*"))  # no temporary files left


# ----------------------------------------------------------------------------- multi-input / multi-head nets
@pytest.fixture(scope="module")
def multitask_weights(tmp_path_factory) -> Path:
    """fcn8s_lite0_multitask (sem 33 + geo 3) with random non-zero score layers, as a weights file."""
    torch.manual_seed(1)
    net = get_model("fcn8s_lite0_multitask")
    for head in net.heads.values():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            nn.init.normal_(getattr(head, name).weight, std=0.05)
    calibrate_batchnorm(net)
    path = tmp_path_factory.mktemp("mt") / "siftflow.safetensors"
    save_weights(net.state_dict(), path, {"model": "fcn8s_lite0_multitask", "num_classes": 33,
                                          "normalization": "imagenet", "options": {},
                                          "head_class_names": {"geo": ["sky", "horizontal", "vertical"]}})
    return path


def test_two_head_model_writes_one_label_map_per_head(multitask_weights, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", str(multitask_weights), "--out", str(out), "--probs",
                 "--batch-size", "2", "--quiet"]) == 0, capsys.readouterr().err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "a_geo.png", "a_probs.npy", "b.png", "b_geo.png", "b_probs.npy",
                       "sub/c.png", "sub/c_geo.png", "sub/c_probs.npy"]
    model = load_model(multitask_weights)
    geo = model.head("geo")
    assert model.heads == {"sem": 33, "geo": 3} and geo.class_names == ["sky", "horizontal", "vertical"]
    net = model.net
    for stem, src in [("a", images / "a.jpg"), ("b", images / "b.png")]:
        img = np.array(Image.open(src).convert("RGB"))
        with torch.inference_mode():
            raw = net(normalize(img, "imagenet")[None])  # the net itself: {"sem": ..., "geo": ...}
        np.testing.assert_array_equal(read_label_png(out / f"{stem}.png"), raw["sem"].argmax(1)[0].numpy())
        np.testing.assert_array_equal(read_label_png(out / f"{stem}_geo.png"), raw["geo"].argmax(1)[0].numpy())
        assert np.load(out / f"{stem}_probs.npy").shape == (33, *img.shape[:2])
    assert len(np.unique(read_label_png(out / "a_geo.png"))) > 1  # the geo head really was read


def test_two_head_model_tiled_equals_whole(multitask_weights, tmp_path):
    src = tmp_path / "wide.png"
    Image.fromarray(picture(40, 1300)).save(src)
    for name, extra in {"whole": ["--tile", "0"], "tiled": ["--tile", "160"]}.items():
        assert main(["predict", str(src), "--model", str(multitask_weights), "--out", str(tmp_path / name),
                     "--quiet", *extra]) == 0
    for label in ("wide.png", "wide_geo.png"):
        whole, tiled = read_label_png(tmp_path / "whole" / label), read_label_png(tmp_path / "tiled" / label)
        assert (whole == tiled).mean() > 0.999, label  # exact (the heads' reach sets the margin) but for ties


@pytest.mark.parametrize("model,needs", [("fcn8s_lite0_rgbd", "rgb (3 channels) + depth (1 channel)"),
                                         ("fcn8s_lite0_rgb_hha", "rgb (3 channels) + hha (3 channels)")])
def test_multi_input_model_is_refused_naming_its_inputs(model, needs, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--model", model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"needs {needs} inputs" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_two_head_model_through_onnx_keeps_both_heads(multitask_weights, images, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "mt.onnx"
    assert main(["export", "--model", str(multitask_weights), "--format", "onnx", "--out", str(onnx_file)]) == 0, \
        capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["predict", str(images / "b.png"), "--model", str(onnx_file), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "b_geo.png"]
    onnx_model, torch_model = load_model(onnx_file), load_model(multitask_weights)
    assert onnx_model.heads == torch_model.heads == {"sem": 33, "geo": 3} and onnx_model.main_head == "sem"
    assert onnx_model.head("geo").class_names == ["sky", "horizontal", "vertical"]
    img = np.array(Image.open(images / "b.png").convert("RGB"))
    for head in ("sem", "geo"):
        _, p_onnx = onnx_model.head(head).predict(img, return_probs=True)
        _, p_torch = torch_model.head(head).predict(img, return_probs=True)
        np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    np.testing.assert_array_equal(read_label_png(out / "b_geo.png"), onnx_model.head("geo").predict(img))


def test_predict_files_is_a_library_call(tmp_path):
    """What `fcnseg predict` does, from Python: same files, failures reported, not raised."""
    import warnings

    import numpy as np
    from PIL import Image

    from fcnseg.inference import load_model

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / "sub" / "b.jpg")
    (src / "bad.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("fcn8s_lite0", num_classes=3)
    heard = []
    result = model.predict_files(src, tmp_path / "out", overlay=True, on_error=lambda p, m: heard.append((p, m)))
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in result.written) == ["a.png", "sub/b.png"]
    assert (tmp_path / "out" / "sub" / "b_overlay.png").is_file()
    assert list(result.failed) == [str(src / "bad.png")] and heard[0][0] == src / "bad.png"
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert np.array_equal(labels, model.predict(src / "a.png"))
    import pytest

    from fcnseg.errors import UserError

    with pytest.raises(UserError, match="batch_size must be >= 1"):
        model.predict_files(src, tmp_path / "out2", batch_size=0)


def test_plan_jobs_takes_this_ranks_share(tmp_path):
    """Under torchrun each rank plans every N-th sorted file; a rank with no share is not an error."""
    import numpy as np
    from PIL import Image

    from fcnseg.inference.files import plan_jobs
    from fcnseg.inference.shard import Shard

    src = tmp_path / "in"
    src.mkdir()
    for name in ("c.png", "a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src / name)
    every, _ = plan_jobs([src], tmp_path / "out")
    r0, _ = plan_jobs([src], tmp_path / "out", shard=Shard(0, 2))
    r1, _ = plan_jobs([src], tmp_path / "out", shard=Shard(1, 2))
    assert [p.name for p, _ in r0] == ["a.png", "c.png"] and [p.name for p, _ in r1] == ["b.png"]
    assert sorted(r0 + r1) == sorted(every)
    r4, _ = plan_jobs([src / "a.png"], tmp_path / "out", shard=Shard(3, 4))
    assert r4 == []


def test_torchrun_shards_files_across_ranks(weights, images, tmp_path):
    """torchrun, 2 CPU processes (gloo): each file written once, in one tree, equal to one process's
    output; a bad file on one rank makes both ranks exit 1; rank 0 prints the totals."""
    from fcnseg.inference.shard import Shard

    assert [j for j in Shard(1, 2).take([("c",), ("a",), ("b",)])] == [("b",)]  # sorted, every 2nd
    assert Shard(0, 2, 1).device("cpu") == "cpu"
    (images / "fake.png").write_text("not a png")
    single, multi = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path),
           "FCNSEG_PRECISION": "fp32"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    assert main(["predict", str(images), "--model", str(weights), "--out", str(single), "--device", "cpu",
                 "-q"]) == 1
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0",
                          "-m", "fcnseg.cli.main", "predict", str(images), "--model", str(weights),
                          "--out", str(multi), "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode != 0  # torchrun: a rank exited 1 (the bad file), reported as a failure
    assert "fake.png" in run.stderr and "wrote 3 label map(s)" in run.stderr and "(2 processes)" in run.stderr
    assert run.stderr.count("1 image(s) failed") == 1  # one summary, from rank 0, with the total
    got = sorted(p.relative_to(multi).as_posix() for p in multi.rglob("*.png"))
    assert got == sorted(p.relative_to(single).as_posix() for p in single.rglob("*.png")) == \
        ["a.png", "b.png", "sub/c.png"]
    for rel in got:
        np.testing.assert_array_equal(np.asarray(Image.open(multi / rel)), np.asarray(Image.open(single / rel)))
