"""Keep freed memory in the process, in huge pages (CPU inference and training).

Why: a CPU forward pass allocates every layer's output afresh and frees it a layer later.
glibc serves large allocations with a fresh ``mmap`` and unmaps them on ``free``, and gives
the heap's free top back to the kernel; so nearly every activation is memory the kernel must
map and zero, 4 KiB page by page, when the layer first writes it. Measured on a Zen 4 EPYC
(2 threads, ``camvid-fcn8s-lite0``, fp32; docs/performance.md): 80 000-185 000 page faults
per megapixel, the kernel's share a third to a half of the CPU time of ``predict``.

Two settings remove it, and both are needed:

- **Huge pages for torch's big buffers**: PyTorch's own ``THP_MEM_ALLOC_ENABLE=1`` (buffers of
  2 MiB and more aligned to 2 MiB and ``madvise(MADV_HUGEPAGE)``). Torch reads it at its first
  allocation, so :func:`request_huge_pages` sets it when ``fcnseg`` is imported before torch;
  a user who imports torch first can set it themselves.
- **No giving back** (``mallopt``): ``M_MMAP_MAX = 0`` (every allocation from the heap, so a
  freed block is reused by the next layer) and ``M_TRIM_THRESHOLD = -1`` (the heap is never
  returned to the kernel). :func:`keep_freed_memory` sets these only where the huge pages are
  in force (measured by :func:`huge_pages_active`): with 4 KiB pages glibc's aligned
  allocations fragment the heap, and a 100 MP image then held 17 GB instead of 5.5.

Together (same machine, Lite0 fp32): a repeated 1 MP image 0.16-0.28 -> 0.08-0.09 s/MP, a
repeated 16 MP image 0.25-0.37 -> 0.075 s/MP, a 100 MP image 0.35-0.48 -> 0.14-0.15 s/MP, a
training step 1.2 -> 0.8 s (the first image of a new size pays its page faults once). The cost:
the process keeps the memory of its largest image (3.8 GB after 16 MP images vs 2.9 GB with
glibc's defaults; a tiled 100 MP image peaks at 8-9 GB vs 5.6).
:func:`fcnseg.runtime.memory.available_bytes` counts what it holds free
(:func:`retained_free_bytes`) when tiles and batches are sized, and after an image of 4 MP or
more ``predict`` gives back what exceeds a quarter of the machine's memory
(:func:`release_excess`), so a 100 MP image does not pin its peak for the rest of the process. Applied by the
``fcnseg`` command, by :func:`fcnseg.load_model` for a CPU model and by CPU training;
``FCNSEG_MALLOC=system`` leaves torch's and glibc's defaults alone. Elsewhere than glibc on
Linux it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_MAX = -4
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by PyTorch's CPU allocator (c10) at its first allocation

_state: dict[str, bool] = {}


OPT_OUT = ("system", "0", "off")
DEFAULT = ("", "default", "1", "on")


def opted_out() -> bool:
    """``FCNSEG_MALLOC=system`` (or ``0`` / ``off``): leave the allocator settings alone.

    Any value other than those and ``default`` / ``1`` / ``on`` is reported once on stderr and
    read as the default.
    """
    value = os.environ.get("FCNSEG_MALLOC", "").strip().lower()
    if value not in OPT_OUT + DEFAULT and not _state.get("warned"):
        _state["warned"] = True
        print(f"fcnseg: FCNSEG_MALLOC={value!r} not understood (expected 'system' or 'default'); "
              "using the default", file=sys.stderr)
    return value in OPT_OUT


def request_huge_pages() -> None:
    """Ask torch for huge pages on its big CPU buffers, if torch is not imported yet (``import fcnseg``)."""
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not opted_out():
        os.environ.setdefault(THP_ENV, "1")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's glibc with the signatures used here (looked up once: it is asked on every ``predict``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # only glibc has gnu_get_libc_version (musl's mallopt exists but does nothing)
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _MallInfo2
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def proc_kb(path: str, field: str) -> int | None:
    """A ``Field:   N kB`` value of a /proc file (``/proc/meminfo``, ``/proc/self/status``, ...); None if absent."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def huge_pages_active() -> bool:
    """Whether torch's big CPU buffers land in huge pages: an 8 MiB tensor is written and counted.

    False when torch was imported without ``THP_MEM_ALLOC_ENABLE=1`` or the kernel's
    transparent huge pages are off.
    """
    import torch

    before = proc_kb("/proc/self/smaps_rollup", "AnonHugePages")
    if before is None:
        return False
    probe = torch.empty(8 << 20, dtype=torch.uint8)
    probe.fill_(1)
    grown = (proc_kb("/proc/self/smaps_rollup", "AnonHugePages") or 0) - before
    del probe
    return grown >= 2048


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory instead of returning it to the kernel (decided once per process).

    Returns whether the settings are in force: False with ``FCNSEG_MALLOC=system``, without
    glibc, or where torch's buffers are not in huge pages (:func:`huge_pages_active`).
    """
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if not opted_out():
        libc = _glibc()
        _state["huge_pages"] = libc is not None and huge_pages_active()
        if libc is not None and _state["huge_pages"]:
            applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    _state["applied"] = applied
    return applied


def retained_free_bytes() -> int:
    """Bytes glibc holds free inside this process (all arenas; 0 without glibc's ``mallinfo2``).

    Memory the process can reuse without asking the kernel: with :func:`keep_freed_memory`
    in force, a big image's activations stay here after it is done, and the next image's
    plan may count on them.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return 0
    info = libc.mallinfo2()
    free = int(info.fordblks + info.fsmblks)
    # free chunks that malloc_trim handed back (MADV_DONTNEED) stay in the heap's free lists but
    # are no longer resident, and the kernel counts them as available already: count only what
    # is resident beyond the bytes in use
    resident = proc_kb("/proc/self/status", "RssAnon")
    if resident is not None:
        free = min(free, max(0, resident * 1024 - int(info.uordblks + info.hblkhd)))
    return free


def release_excess(fraction: float = 0.25) -> bool:
    """Give freed memory back to the kernel when the process holds more than ``fraction`` of RAM free.

    Called after big images: repeated images up to ~16 MP keep their memory (and their speed),
    a 100 MP one does not pin its peak for the rest of the process. Returns whether it trimmed.
    """
    if not _state.get("applied"):
        return False
    total_kb = proc_kb("/proc/meminfo", "MemTotal")
    libc = _glibc()
    if total_kb is None or libc is None or not hasattr(libc, "malloc_trim") \
            or retained_free_bytes() <= fraction * total_kb * 1024:
        return False
    libc.malloc_trim(0)
    return True
