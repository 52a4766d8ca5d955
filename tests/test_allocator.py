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
if sys.argv[1] != "torch-first":
    import fcnseg  # before torch: asks torch for huge pages
import torch
from fcnseg.runtime.allocator import keep_freed_memory, retained_free_bytes
applied = keep_freed_memory() if sys.argv[1] != "default" else False
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1))
x = torch.randn(1, 3, 1024, 1024)
with torch.inference_mode():
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
from fcnseg.runtime.allocator import _state
print(json.dumps({"applied": applied, "faults": faults, "retained": retained_free_bytes(),
                  "huge_pages": _state.get("huge_pages")}))
"""


def _thp_available() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


needs_thp = pytest.mark.skipif(allocator._glibc() is None or not _thp_available(),
                               reason="glibc and transparent huge pages only")


def _skip_without_huge_pages(out: dict) -> None:
    if out.get("huge_pages") is False:  # THP is on, but the kernel had no free 2 MiB page just now
        pytest.skip("no transparent huge page was given to the probe tensor")


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "FCNSEG_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**base, "PYTHONPATH": SRC, **env})
    return json.loads(out.stdout)


@needs_thp
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default = _probe("default", FCNSEG_MALLOC="system")
    kept = _probe("apply")
    _skip_without_huge_pages(kept)
    assert kept["applied"] is True
    # glibc's default unmaps each freed 64 MiB output, so every pass faults its pages in again
    # (6 x 16384 here); kept, the pass reuses the blocks the previous one freed
    assert default["faults"] > 30000
    assert kept["faults"] < default["faults"] / 20
    # what the process holds free counts as available memory for tile and batch sizes
    assert kept["retained"] >= 64 * 2 ** 20


@needs_thp
def test_not_applied_without_huge_pages():
    # torch imported before fcnseg and without THP_MEM_ALLOC_ENABLE: glibc's aligned
    # allocations would fragment a never-trimmed heap, so the defaults stay
    out = _probe("torch-first", THP_MEM_ALLOC_ENABLE="0")
    assert out["applied"] is False
    assert out["faults"] > 30000
    forced = _probe("torch-first", THP_MEM_ALLOC_ENABLE="1")  # the user's own setting is honoured
    _skip_without_huge_pages(forced)
    assert forced["applied"] is True


@needs_thp
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


RELEASE = """
import json
import fcnseg
import torch
from fcnseg.runtime import allocator
from fcnseg.runtime.allocator import keep_freed_memory, release_excess, retained_free_bytes

def resident_anon():  # walks the page tables: exact, unlike the status counters
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024

applied = keep_freed_memory()
x = torch.ones(64 * 2 ** 20, dtype=torch.uint8)
del x
held, anon = retained_free_bytes(), resident_anon()
kept = release_excess(fraction=1.0)  # holds far less than all of RAM: kept
released = release_excess(fraction=0.0)
print(json.dumps({"applied": applied, "held": held, "kept": kept, "released": released, "anon_before": anon,
                  "anon_after": resident_anon(), "huge_pages": allocator._state.get("huge_pages")}))
"""


@needs_thp
def test_release_excess_gives_memory_back_above_the_limit():
    base = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "FCNSEG_MALLOC")}
    out = json.loads(subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True,
                                    env={**base, "PYTHONPATH": SRC}).stdout)
    _skip_without_huge_pages(out)
    assert out["applied"] is True and out["held"] >= 64 * 2 ** 20
    assert out["kept"] is False and out["released"] is True
    assert out["anon_after"] < out["anon_before"] - 32 * 2 ** 20


def test_unknown_setting_is_reported_once_and_read_as_default(monkeypatch, capsys):
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("FCNSEG_MALLOC", "jemalloc")
    assert allocator.opted_out() is False
    assert allocator.opted_out() is False
    err = capsys.readouterr().err
    assert err.count("FCNSEG_MALLOC='jemalloc' not understood") == 1
    for value in ("system", "OFF", "0"):
        monkeypatch.setenv("FCNSEG_MALLOC", value)
        assert allocator.opted_out() is True
    monkeypatch.setenv("FCNSEG_MALLOC", "default")
    assert allocator.opted_out() is False and capsys.readouterr().err == ""
