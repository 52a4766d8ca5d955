"""Keep freed memory in the process for reuse (glibc malloc settings for CPU inference and training).

Why: a CPU forward pass allocates every layer's output afresh and frees it a layer later.
glibc serves large allocations (above its mmap threshold: 128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and unmaps them on ``free``, and gives the heap's free top back to the
kernel; so nearly every activation is memory the kernel must map and zero page by page when
the layer first writes it. Measured on a Zen 4 EPYC (2 threads, `camvid-fcn8s-lite0`, fp32,
docs/performance.md): the kernel's share was a third to a half of the CPU time of `predict`,
and removing it made a 1 MP image 1.6x faster (0.27-0.32 -> 0.16-0.19 s/MP), a 100 MP image
2x faster (0.47 -> 0.24 s/MP) and a Lite0 training step 1.35x faster (1.29 -> 0.96 s).

What it sets (``mallopt``): ``M_MMAP_MAX = 0`` (every allocation comes from the heap, so a
freed block is reused by the next layer) and ``M_TRIM_THRESHOLD = -1`` (the heap is never
given back). The cost: the process keeps the memory of its largest step until it exits
(the peak itself does not grow). This is what jemalloc / tcmalloc preloading buys in the
usual CPU tuning guides, without a preload. It changes the whole process, so it is applied
by the ``fcnseg`` command and, in the library, by :func:`fcnseg.load_model` for a CPU model and by
training on the CPU; ``FCNSEG_MALLOC=system`` leaves glibc's defaults alone. Elsewhere than
glibc (macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_MAX = -4

_state: dict[str, bool] = {}


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # only glibc has gnu_get_libc_version (musl's mallopt exists but does nothing)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed memory instead of returning it to the kernel (once per process).

    Returns whether the settings are in force: False with ``FCNSEG_MALLOC=system`` or
    without glibc.
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if os.environ.get("FCNSEG_MALLOC", "").strip().lower() not in ("system", "0", "off"):
        libc = _glibc()
        if libc is not None:
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.mallopt.restype = ctypes.c_int
            applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    _state["applied"] = applied
    return applied
