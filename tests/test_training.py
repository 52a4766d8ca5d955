"""The training engine: runs, logs, resumes exactly after SIGKILL, stops cleanly on
SIGTERM, refuses damaged checkpoints, stops on NaN, and DDP equals one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fcnseg.cli.main import main
from fcnseg.errors import UserError
from fcnseg.training import load_checkpoint, load_config, save_checkpoint

H, W = 24, 32


def _write_camvid(root: Path, n_train: int = 8, n_val: int = 3) -> Path:
    """A tiny data set in the CamVid (SegNet) on-disk layout whose labels follow the colours."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        lines = []
        for i in range(n):
            label = np.zeros((H, W), np.uint8)
            label[:, W // 2:] = 3
            label[H // 2:, :] = rng.integers(0, 11)
            label[0, 0] = 11  # void
            palette = rng.integers(0, 255, (12, 3), dtype=np.uint8)
            image = palette[label] // 2 + rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / f"{i:03d}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"{i:03d}.png")
            lines.append(f"{split}/{i:03d}.png {split}annot/{i:03d}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _config(data_root: Path, run_dir: Path, **over) -> Path:
    cfg = {
        "model": "fcn32s_lite0", "dataset": "camvid", "data_root": str(data_root), "val_split": "val",
        "batch_size": 2, "epochs": 2, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
        "loss_normalize": True, "workers": 0, "log_every": 1, "checkpoint_every": 1,
        "val_every": 1, "run_dir": str(run_dir), "seed": 3, "deterministic": True, "threads": 1,
        "progress": False, "flip": True,
        # Frozen BatchNorm statistics: at stride 32 these 24x32 images are 1x1 maps, so batch
        # statistics would be over 2 values per channel, an unstable recipe whose gradients
        # overflow (grad norms 1e3..1e16; NaN or not depending on the CPU's GEMM rounding).
        "freeze_bn": True,
    }
    cfg.update(over)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fcnseg.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    log = run_dir / "log.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("type") == "train" and row["step"] >= step:
                    return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for training progress")


def test_train_writes_checkpoints_logs_and_weights(data_root, tmp_path):
    run = tmp_path / "run"
    cfg = _config(data_root, run, optimizer="adamw", lr=0.001, epochs=1, val_every=2)
    assert main(["train", str(cfg), "--epochs", "4"]) == 0
    for name in ("last.pt", "best.pt", "best.safetensors", "final.safetensors", "config.yaml", "log.jsonl"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    train = [r for r in rows if r["type"] == "train"]
    val = [r for r in rows if r["type"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 17))  # 8 images / batch 2 x 4 epochs
    assert [r["step"] for r in val] == [8, 16] and all(0 <= r["mean_iou"] <= 1 for r in val)
    first, last = sum(r["loss"] for r in train[:4]), sum(r["loss"] for r in train[-4:])
    assert last < 0.95 * first  # it learns
    state = load_checkpoint(run / "last.pt")
    assert state["position"] == {"epoch": 4, "micro_in_epoch": 0, "step": 16}
    assert state["config"]["model"] == "fcn32s_lite0"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "position", "config"} <= set(state)
    from fcnseg.weights import load_weights, read_meta

    meta = read_meta(run / "best.safetensors")
    assert meta["num_classes"] == 11 and meta["class_names"][0] == "Sky" and meta["normalization"] == "imagenet"
    # final.safetensors: the last step's weights (= last.pt's), with the recipe and last validation
    final = read_meta(run / "final.safetensors")
    assert final["provenance"]["recipe"]["optimizer"] == "adamw" and final["provenance"]["step"] == 16
    assert final["provenance"]["val"]["mean_iou"] == val[-1]["mean_iou"]
    final_state = load_weights(run / "final.safetensors")[0]
    assert all(torch.equal(final_state[k], v.float()) for k, v in state["model"].items() if k in final_state)
    import fcnseg  # the checkpoint serves inference as well as resuming: same net as best.safetensors

    from_ckpt, from_weights = fcnseg.load_model(run / "best.pt"), fcnseg.load_model(run / "best.safetensors")
    assert from_ckpt.class_names == from_weights.class_names and from_ckpt.info.meta["dataset"] == "camvid"
    image = np.asarray(Image.open(data_root / "val" / "000.png").convert("RGB"))
    np.testing.assert_array_equal(from_ckpt.predict(image, return_probs=True)[1],
                                  from_weights.predict(image, return_probs=True)[1])
    out = main(["plot", str(run)])
    assert out == 0 and (run / "curves.png").stat().st_size > 1000


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(data_root, tmp_path):
    full = tmp_path / "full"
    cfg = _config(data_root, full, epochs=4, val_every=2)
    proc = _cli("train", str(cfg))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]

    killed = tmp_path / "killed"
    cfg2 = _config(data_root, killed, epochs=4, val_every=2)
    proc = _cli("train", str(cfg2))
    _wait_for_step(killed, 6, proc)  # epoch 1 of 4 epochs x 4 steps: mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pos = load_checkpoint(killed / "last.pt")["position"]
    assert pos["step"] < 16, "the run finished before it was killed: nothing was tested"
    proc = _cli("train", "--resume", str(killed))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]

    a = load_checkpoint(full / "last.pt")
    b = load_checkpoint(killed / "last.pt")
    assert a["position"] == b["position"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["best"] == b["best"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_root, tmp_path):
    run = tmp_path / "term"
    proc = _cli("train", str(_config(data_root, run, epochs=50, val_split=None)))
    _wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "resume" in err
    rows = _rows(run)
    stop = [r for r in rows if r["type"] == "interrupted"]
    assert stop and stop[-1]["signal"] == "SIGTERM"
    assert load_checkpoint(run / "last.pt")["position"]["step"] == stop[-1]["step"]
    # an interrupted run is not a finished one: no final weights, no "end" row
    assert not (run / "final.safetensors").exists() and not [r for r in rows if r["type"] == "end"]


def test_damaged_checkpoints_are_refused(tmp_path, data_root, capsys):
    path = save_checkpoint({"model": {"w": torch.randn(1000)}, "config": {}}, tmp_path / "last.pt")
    original = torch.load  # the file is an ordinary torch archive (weights_only-safe)
    assert isinstance(original(path, weights_only=True), dict)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.pt"
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(data)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(flipped)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(truncated.read_bytes())
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_nan_loss_stops_naming_the_step_or_skips(data_root, tmp_path, capsys):
    run = tmp_path / "nan"
    cfg = _config(data_root, run, lr=1.0e+30, momentum=0.0, loss_normalize=False, val_split=None, epochs=3)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "at step" in err
    run2 = tmp_path / "skip"
    cfg2 = _config(data_root, run2, lr=1.0e+30, momentum=0.0, loss_normalize=False, val_split=None,
                   epochs=2, nan_policy="skip")
    assert main(["train", str(cfg2)]) == 0
    assert any(r["type"] == "skipped" for r in _rows(run2))


def test_config_file_overrides_and_errors(tmp_path, data_root):
    cfg_path = _config(data_root, tmp_path / "c", lr=0.5)
    cfg = load_config(cfg_path, {"lr": "1e-3", "crop_size": "[16, 16]", "flip": "false"})
    assert cfg.lr == 1e-3 and cfg.crop_size == [16, 16] and cfg.flip is False and cfg.batch_size == 2
    # `none` (as --help spells it) and YAML's null both switch an optional option off
    for off in ("none", "None", "null"):
        cfg = load_config(cfg_path, {"crop_size": off, "scale_range": off, "init_from": off, "class_weights": off})
        assert cfg.crop_size is None and cfg.scale_range is None and cfg.init_from is None
        assert cfg.class_weights is None
    assert load_config(cfg_path, {"amp": "none"}).amp == "none"  # a plain string option keeps the word
    with pytest.raises(UserError, match="unknown option 'learning_rate'"):
        from fcnseg.training import TrainConfig

        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(UserError, match="lr_schedule"):
        load_config(cfg_path, {"lr_schedule": "step"})
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_config_loads(tmp_path):
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config(path)
        assert cfg.model


def test_resume_refuses_to_change_the_recipe(data_root, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "cannot change on --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert load_checkpoint(run / "last.pt")["position"]["step"] == 8


def test_ddp_two_processes_equal_one_process(data_root, tmp_path):
    """2 gloo processes x batch 1 == 1 process x batch 2 (same global batch), BN frozen."""
    common = dict(epochs=1, val_split=None, freeze_bn=True, loss_normalize=True, flip=False,
                  optimizer="sgd", lr=0.05, momentum=0.9)
    single = tmp_path / "single"
    assert main(["train", str(_config(data_root, single, batch_size=2, **common))]) == 0
    ddp = tmp_path / "ddp"
    cfg = _config(data_root, ddp, batch_size=1, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run(torchrun + ["-m", "fcnseg.cli.main", "train", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(ddp / "last.pt")
    assert a["position"]["step"] == b["position"]["step"] == 4
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6, rtol=1e-5), key
    assert a["model"]["score_fr.weight"].abs().sum() > 0  # it trained (score layers start at zero)


def test_staged_training_init_from_coarser_net(data_root, tmp_path, capsys):
    """32s -> 16s: the finer net starts from the coarser run's best weights."""
    coarse = tmp_path / "c32"
    assert main(["train", str(_config(data_root, coarse, epochs=1, optimizer="adamw", lr=0.001))]) == 0
    fine = tmp_path / "f16"
    cfg = _config(data_root, fine, model="fcn16s_lite0", epochs=1, max_iters=1, optimizer="adamw", lr=1e-9,
                  init_from=str(coarse / "best.safetensors"), val_split=None)
    assert main(["train", str(cfg)]) == 0
    assert "tensors copied" in capsys.readouterr().err
    from fcnseg.weights import load_weights

    src = load_weights(coarse / "best.safetensors")[0]
    dst = load_checkpoint(fine / "last.pt")["model"]
    w = "backbone._blocks.3._depthwise_conv.weight"
    assert torch.allclose(src[w], dst[w], atol=1e-6)  # one tiny step later
    bad = _config(data_root, tmp_path / "bad", model="fcn16s_lite0", init_from=str(tmp_path / "none.pt"))
    assert main(["train", str(bad)]) == 2


def test_multimodal_and_multitask_nets_train_end_to_end(tmp_path):
    """RGB-D (NYUD layout, depth as a second input) and two-head (SIFT Flow layout) nets
    go through `fcnseg train` and validation; the loss falls."""
    pytest.importorskip("scipy.io")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_nyud_siftflow import write_nyud, write_siftflow

    nyud = tmp_path / "nyud"
    write_nyud(nyud, ids=("1", "2", "3", "4", "5"))
    (nyud / "train.txt").write_text("1\n2\n3\n4\n")
    (nyud / "val.txt").write_text("5\n")
    run = tmp_path / "rgbd"
    cfg = _config(nyud, run, model="fcn8s_lite0_rgbd", dataset="nyud", epochs=6, val_every=6,
                  optimizer="adamw", lr=0.003, flip=True, dataset_options={"modalities": ["image", "depth"]})
    assert main(["train", str(cfg)]) == 0
    losses = [r["loss"] for r in _rows(run) if r["type"] == "train"]
    assert sum(losses[-2:]) < sum(losses[:2])
    assert any(r["type"] == "val" for r in _rows(run))

    sift = tmp_path / "sift"
    write_siftflow(sift, ids=tuple(f"img{i}" for i in range(4)))
    (sift / "test.txt").write_text("img0\n")
    run2 = tmp_path / "two-head"
    cfg2 = _config(sift, run2, model="fcn8s_lite0_multitask", dataset="siftflow", train_split="trainval",
                   val_split="test", epochs=6, val_every=6, optimizer="adamw", lr=0.003)
    assert main(["train", str(cfg2)]) == 0
    losses = [r["loss"] for r in _rows(run2) if r["type"] == "train"]
    assert sum(losses[-2:]) < sum(losses[:2])


def test_gradient_accumulation_equals_the_larger_batch(data_root, tmp_path):
    common = dict(epochs=1, val_split=None, freeze_bn=True, loss_normalize=True, flip=False,
                  optimizer="sgd", lr=0.05, momentum=0.9, channels_last=True)
    big = tmp_path / "big"
    assert main(["train", str(_config(data_root, big, batch_size=2, **common))]) == 0
    acc = tmp_path / "acc"
    assert main(["train", str(_config(data_root, acc, batch_size=1, grad_accum=2, **common))]) == 0
    a, b = load_checkpoint(big / "last.pt"), load_checkpoint(acc / "last.pt")
    assert a["position"]["step"] == b["position"]["step"] == 4
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6, rtol=1e-5), key
    assert a["model"]["score_fr.weight"].abs().sum() > 0


def test_mixed_precision_autocast_and_loss_scaling_run_on_cpu(data_root, tmp_path):
    """The AMP path (autocast, GradScaler state in checkpoints, validation under autocast)
    is device-generic, so CI exercises it on CPU; on CUDA only the device differs."""
    common = dict(epochs=4, val_every=4, optimizer="adamw", lr=0.01)
    runs = {}
    for amp in ("none", "bf16", "fp16"):
        runs[amp] = tmp_path / amp
        assert main(["train", str(_config(data_root, runs[amp], amp=amp, **common))]) == 0
    states = {amp: load_checkpoint(run / "last.pt") for amp, run in runs.items()}
    assert states["fp16"]["scaler"]["scale"] > 0 and states["none"]["scaler"] == {} == states["bf16"]["scaler"]
    ref = states["none"]["model"]["score_fr.weight"]
    for amp in ("bf16", "fp16"):
        losses = [r["loss"] for r in _rows(runs[amp]) if r["type"] == "train"]
        assert all(np.isfinite(losses)) and sum(losses[-4:]) < 0.95 * sum(losses[:4]), amp  # it learns
        val = [r for r in _rows(runs[amp]) if r["type"] == "val"]
        assert val and 0 <= val[-1]["mean_iou"] <= 1
        # The forward really ran in reduced precision: not the fp32 trajectory.
        assert not torch.equal(states[amp]["model"]["score_fr.weight"], ref), amp
    # An fp16 run resumes with its loss-scaler state.
    assert main(["train", "--resume", str(runs["fp16"]), "--epochs", "5"]) == 0
    assert load_checkpoint(runs["fp16"] / "last.pt")["scaler"]["scale"] > 0


def test_config_base_inheritance(tmp_path):
    """`base:` names another config (relative path); the file overrides it, `null` unsets."""
    (tmp_path / "a.yaml").write_text("model: fcn32s_vgg16\nlr: 1.0e-10\ninit_from: x.pt\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nlr: 1.0e-12\ninit_from: null\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.model, cfg.lr, cfg.init_from) == ("fcn32s_vgg16", 1e-12, None)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")
    # the staged VOC recipes: the 32s recipe but for what staging changes
    configs = Path(__file__).resolve().parents[1] / "configs"
    v32 = load_config(configs / "voc-fcn32s.yaml").to_dict()
    v16 = load_config(configs / "voc-fcn16s.yaml").to_dict()
    changed = {k for k in v32 if v32[k] != v16[k]}
    assert changed == {"model", "backbone_weights", "init_from", "lr", "run_dir"}
    assert v16["backbone_weights"] is None and v16["lr"] == 1e-12


def test_ohem_and_lovasz_train_and_change_the_trajectory(data_root, tmp_path):
    """The loss options reach the engine: runs finish, are saved in the run's config, and
    differ from plain cross-entropy."""
    common = dict(epochs=2, val_every=2, optimizer="adamw", lr=0.002, flip=False)
    states = {}
    for name, over in {"ce": {}, "ohem": {"ohem_keep": 0.3}, "lovasz": {"lovasz_weight": 1.0}}.items():
        run = tmp_path / name
        assert main(["train", str(_config(data_root, run, **common, **over))]) == 0
        losses = [r["loss"] for r in _rows(run) if r["type"] == "train"]
        assert all(np.isfinite(losses)), name
        if name != "ohem":  # the hardest pixels' loss need not fall: the selection follows them
            assert sum(losses[-3:]) < sum(losses[:3]), name
        states[name] = load_checkpoint(run / "last.pt")["model"]["score_fr.weight"]
        saved = load_config(run / "config.yaml")
        assert (saved.ohem_keep, saved.lovasz_weight) == (over.get("ohem_keep", 1.0), over.get("lovasz_weight", 0.0))
    assert not torch.equal(states["ce"], states["ohem"]) and not torch.equal(states["ce"], states["lovasz"])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def test_resume_with_the_same_step_in_smaller_passes(data_root, tmp_path, capsys):
    """batch 2 x 1 pass resumed as batch 1 x 2 passes: same images per step and schedule, so with
    BatchNorm frozen and equal pixels per image the weights equal the unsplit run's (to rounding)."""
    common = dict(epochs=2, max_iters=2, val_split=None, flip=False)  # stops mid-epoch: 2 of 4 batches
    whole, split = tmp_path / "whole", tmp_path / "split"
    for run in (whole, split):
        assert main(["train", str(_config(data_root, run, **common))]) == 0
    assert load_checkpoint(split / "last.pt")["position"]["micro_in_epoch"] == 2
    assert main(["train", "--resume", str(whole), "--max-iters", "8"]) == 0
    assert main(["train", "--resume", str(split), "--max-iters", "8", "--batch-size", "1", "--grad-accum", "2"]) == 0
    state = load_checkpoint(split / "last.pt")
    assert state["position"]["step"] == 8 and state["config"]["batch_size"] == 1
    a, b = _weights(whole), _weights(split)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    # a split that changes the images per step is refused, naming the product to keep
    capsys.readouterr()
    assert main(["train", "--resume", str(split), "--max-iters", "9", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "must stay 2" in err and "Traceback" not in err


def test_smaller_passes_keep_the_images_per_step():
    from fcnseg.training.engine import smaller_passes

    assert smaller_passes(8, 1) == (4, 2) and smaller_passes(2, 1) == (1, 2) and smaller_passes(4, 2) == (2, 4)
    assert smaller_passes(5, 1) == (1, 5) and smaller_passes(5, 2) == (2, 5)  # odd batches: a divisor, not b // 2


def test_out_of_memory_is_one_line_with_the_way_on(data_root, tmp_path, capsys, monkeypatch):
    """An allocation failure mid-run names the device, the batch and the resume command that
    takes the same step in smaller passes, and the last checkpoint; the command then works."""
    from fcnseg.training import engine

    run = tmp_path / "oom"
    real_loss, calls = engine.Trainer._loss, {"n": 0}

    def failing_loss(self, out, y):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(self, out, y)

    monkeypatch.setattr(engine.Trainer, "_loss", failing_loss)
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 2
    err = capsys.readouterr().err
    assert "out of memory on cpu in training step 3 (batch_size 2 of whole images)" in err
    assert f"--resume {run} --batch-size 1 --grad-accum 2" in err
    assert "step 2)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(engine.Trainer, "_loss", real_loss)
    assert main(["train", "--resume", str(run), "--batch-size", "1", "--grad-accum", "2"]) == 0
    assert load_checkpoint(run / "last.pt")["position"]["step"] == 4


def test_a_batch_that_cannot_fit_is_refused_before_the_first_step(data_root, tmp_path, capsys, monkeypatch):
    """The estimate (runtime.memory.training_bytes) against the memory available: below its low
    end the run is refused in one line naming the batch; between its ends it warns and trains."""
    from fcnseg.models import get_model
    from fcnseg.runtime import memory

    net = get_model("fcn32s_lite0", 11)
    low, high = (e - memory.state_bytes(net) for e in memory.training_bytes(net, (2, 3, H, W)))  # beyond the weights
    assert 0 < low < high
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": low - 1)
    run = tmp_path / "small"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 2
    err = capsys.readouterr().err
    assert f"batch_size 2 of {H}x{W} inputs: a training step needs about" in err
    assert "lower batch_size" in err and "Traceback" not in err
    assert not (run / "last.pt").exists()
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (low + high) // 2)
    run = tmp_path / "tight"
    assert main(["train", str(_config(data_root, run, epochs=1, val_split=None))]) == 0
    warnings = [r["message"] for r in _rows(run) if r["type"] == "warning"]
    assert any("may run out of memory" in m for m in warnings)


def test_training_estimate_grows_with_the_batch():
    """The (low, high) estimate scales with the batch above a fixed weights part (3x the weights at the low end);
    scripts/train_memory.py compares it with measured peaks."""
    from fcnseg.models import get_model
    from fcnseg.runtime.memory import state_bytes, training_bytes

    net = get_model("fcn8s_lite0", 11)
    one, four = training_bytes(net, (1, 3, 96, 128)), training_bytes(net, (4, 3, 96, 128))
    weights = 3 * state_bytes(net)
    assert one[0] > weights and abs((four[0] - weights) - 4 * (one[0] - weights)) <= 4
    assert four[1] > four[0]


def test_the_estimate_runs_a_meta_copy_unseen_by_hooks():
    """training_bytes/forward_bytes run a shapes-only copy: a user's forward hook on the net does not
    fire, and the net's weights stay where they were."""
    from fcnseg.models import get_model
    from fcnseg.runtime.memory import forward_bytes, training_bytes

    net = get_model("fcn8s_lite0", 3)
    calls = []
    net.register_forward_pre_hook(lambda module, inputs: calls.append(module.training))
    assert training_bytes(net, (2, 3, 64, 96)) is not None and forward_bytes(net, (1, 3, 64, 96)) > 0
    assert calls == [] and all(p.device.type == "cpu" for p in net.parameters())
