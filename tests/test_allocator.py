"""The malloc settings of fcnseg.runtime.allocator: freed memory is reused, not faulted in again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.runtime import allocator

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Four forward passes of two convolutions with 64 MiB outputs; the minor page faults of the last.
PROBE = """
import json, resource, sys
import torch
from fcnseg.runtime.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "apply" else False
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1))
x = torch.randn(1, 3, 1024, 1024)
with torch.inference_mode():
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": SRC, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default = _probe("default")
    kept = _probe("apply")
    assert kept["applied"] is True
    # glibc's default unmaps each freed 64 MiB output, so every pass faults its pages in again
    # (6 x 16384 here); kept, the pass reuses the blocks the previous one freed
    assert default["faults"] > 30000
    assert kept["faults"] < default["faults"] / 20


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_opt_out_leaves_glibc_defaults():
    out = _probe("apply", FCNSEG_MALLOC="system")
    assert out["applied"] is False
    assert out["faults"] > 30000


def test_applied_once_per_process(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_glibc", lambda: pytest.fail("looked up twice"))
    assert allocator.keep_freed_memory() is False
