from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Tests compare against exact fp32 results; precision="auto" (which measures this machine) is
# tested explicitly in test_choice.py / test_precision.py with this variable removed.
os.environ.setdefault("FCNSEG_PRECISION", "fp32")
# The CPU default path's frozen per-shape graphs cost a trace per new shape, which many short
# tests would each pay (~40 % of the inference tests' time); tests/test_fast.py tests them with
# this variable set to 1.
os.environ.setdefault("FCNSEG_FREEZE", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (reference prototxts and lists, CamVid): every test that needs it asks for this
    fixture (or, at import time, uses :data:`SHARED`), so all of them skip, or run, together."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A tiny CamVid-layout data set (8 train, 3 val images; ``test_training._write_camvid``), one per
    test module; modules that need another size define their own ``data_root``."""
    from test_training import _write_camvid
    return _write_camvid(tmp_path_factory.mktemp("camvid"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero score layers and non-trivial BN statistics and affine terms, so that comparisons
    of outputs (export, folding) mean something; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.05)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()
