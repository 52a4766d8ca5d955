"""GPU paths: inference, mixed-precision training and the benchmark on CUDA.

Skipped where there is no CUDA device (CI); `scripts/gpu_check.sh` runs them on a GPU
machine together with the full-size benchmark.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fcnseg.cli.main import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture()
def no_tf32():
    """True fp32 on the GPU: TF32 rounds convolution inputs to 10 mantissa bits (~5e-4 relative),
    which is what made the probabilities differ by 3.2e-3 from the CPU's (issue 16)."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def test_predict_on_cuda_matches_cpu(no_tf32):
    """fp32 against fp32: the only differences are summation order (cuDNN vs oneDNN algorithms, and
    the CPU's depthwise vs the GPU's dense upsampling), ~1e-6 relative in the logits, so 1e-4
    on probabilities is 100x headroom and still catches any real error (TF32 alone gave 3.2e-3)."""
    import fcnseg

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    gpu = fcnseg.load_model("camvid-fcn8s-lite0", device="cuda", precision="fp32")
    cpu = fcnseg.load_model("camvid-fcn8s-lite0", device="cpu", precision="fp32")
    assert gpu.device.type == "cuda"
    labels_gpu, probs_gpu = gpu.predict(image, return_probs=True)
    labels_cpu, probs_cpu = cpu.predict(image, return_probs=True)
    np.testing.assert_allclose(probs_gpu, probs_cpu, atol=1e-4)
    assert (labels_gpu == labels_cpu).mean() > 0.999


def test_cuda_fast_path_keeps_the_dense_upsampling_and_auto_precision(monkeypatch, capsys):
    """On CUDA the depthwise rewrite is off (cuDNN's grouped deconvolution is slow); auto measures fp16."""
    import fcnseg
    import fcnseg.inference.precision as precision

    monkeypatch.delenv("FCNSEG_PRECISION", raising=False)
    monkeypatch.setattr(precision, "_CHOSEN", {})
    m = fcnseg.load_model("camvid-fcn8s-lite0", device="auto")
    assert m.device.type == "cuda" and m._run.precision in ("fp16", "fp32")
    assert "precision auto -> " in capsys.readouterr().err
    steps = m._run.runner.steps
    assert not any("depthwise" in s for s in steps) and "channels_last" in steps


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_training_on_cuda(tmp_path, amp):
    from fcnseg.training import load_checkpoint
    from test_training import _config, _rows, _write_camvid

    data = _write_camvid(tmp_path / "camvid")
    run = tmp_path / "run"
    cfg = _config(data, run, device="cuda", amp=amp, epochs=4, val_every=4, optimizer="adamw", lr=0.001,
                  deterministic=False, channels_last=True)
    assert main(["train", str(cfg)]) == 0
    losses = [r["loss"] for r in _rows(run) if r["type"] == "train"]
    assert all(np.isfinite(losses)) and sum(losses[-4:]) < sum(losses[:4])
    state = load_checkpoint(run / "last.pt")
    assert (state["scaler"]["scale"] > 0) if amp == "fp16" else state["scaler"] == {}


def test_bench_fp16_on_cuda(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--model", "fcn8s_lite0", "--num-classes", "3", "--size", "64x96", "--batch", "4",
                 "--device", "cuda", "--precision", "fp16", "--baseline", "--warmup", "2", "--repeats", "3",
                 "--gemm-size", "1024", "-q", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["memory"]["kind"] == "cuda max_memory_allocated" and r["memory"]["mb"] > 0
    assert r["latency_ms"]["median_ms"] > 0 and r["gemm"]["median_gflops"] > 0
    assert r["agreement"]["argmax_agreement"] > 0.95  # fp16 against the fp32 baseline
    assert r["gemm"]["dtype"] == "fp16" and r["gemm_fp32"]["dtype"] == "fp32"  # same-dtype share
    assert "depthwise" not in r["method"]
