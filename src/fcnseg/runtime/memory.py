"""Will a forward pass (or a training step) fit? An estimate made before allocating, for one-line refusals.

``bench --size 100000x100000`` or ``export --trace-size 100000x100000`` would otherwise die
in the allocator with a traceback (or be killed by the OOM killer). The estimate runs the
net on the ``meta`` device (shapes only, nothing allocated) and adds the input, the two
largest activations a layer holds at once (its input and output) and the output, at the
element size of each tensor, plus the weights. It is an estimate, not a bound: allocator
slack and workspace buffers come on top, so a run may still need somewhat more.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import UserError

GiB = 2 ** 30


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory a new allocation can use now: free GPU memory, or the kernel's MemAvailable.

    On the CPU plus what this process's allocator holds free: with freed memory kept in the
    process (:mod:`fcnseg.runtime.allocator`) the kernel counts it as used, yet the next
    forward reuses it first.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    from .allocator import proc_kb, retained_free_bytes

    kb = proc_kb("/proc/meminfo", "MemAvailable")
    return None if kb is None else kb * 1024 + retained_free_bytes()


def param_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters (what each extra copy of its weights costs)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def meta_clone(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the ``meta`` device (shapes only,
    no memory), without the forward hooks anyone registered on ``model``: running it is invisible
    to them (a training run's estimate must not look like a forward pass to a user's hook)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    clone = copy.deepcopy(model, memo)
    for m in clone.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return clone


def _leaf_outputs(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[list[int], int] | None:
    """Bytes of every leaf module's output (in-place ones skipped: they add no tensor) and of the
    net's output, from a run of a :func:`meta_clone`; None for a net that cannot run there."""
    elem = torch.empty((), dtype=dtype).element_size()
    sizes: list[int] = []

    def hook(m: nn.Module, _inp: Any, out: Any) -> None:
        if getattr(m, "inplace", False):
            return
        outs = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
        sizes.extend(t.numel() * elem for t in outs if torch.is_tensor(t))

    try:
        clone = meta_clone(model)
        for m in clone.modules():
            if not list(m.children()):
                m.register_forward_hook(hook)
        with torch.no_grad():
            out = clone(torch.empty(shape, dtype=dtype, device="meta"))
    except Exception:
        return None
    outs = out.values() if isinstance(out, dict) else [out] if torch.is_tensor(out) else []
    return sizes, sum(t.numel() * elem for t in outs)


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers: what its weights hold in memory."""
    return param_bytes(model) + sum(t.numel() * t.element_size() for t in model.buffers())


def forward_bytes(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak bytes of one inference forward of ``model`` on an input of ``shape``."""
    inputs = torch.empty((), dtype=dtype).element_size()
    for n in shape:
        inputs *= n
    leaves = _leaf_outputs(model, shape, dtype)
    if leaves is None:  # fall back to input + output-sized maps
        largest, output = [inputs, inputs], 0
    else:
        largest, output = sorted(leaves[0], reverse=True)[:2], leaves[1]
    return state_bytes(model) + inputs + sum(largest) + output


def training_bytes(model: nn.Module, shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> tuple[int, int] | None:
    """A (low, high) estimate of the peak bytes of one training step on a batch of ``shape``.

    Backward keeps what forward computed: every leaf module's output, held at once. Measured
    on the CPU (peak RSS of real SGD steps against these sums, ``fcn8s_vgg16`` and
    ``fcn8s_lite0/2`` at 256x256-540x720, batch 1-8) each image costs 1.2x (VGG16, in-place
    ReLUs) to 2.2x (the EfficientNet-Lite trunks) the sum of its leaf outputs, and the weights
    3-4x their size (themselves, gradients, momentum, the optimiser's temporaries;
    ``scripts/train_memory.py`` measures both); the fcnseg trainer's own overhead
    (data, logging; ~0.5 GB) and allocator growth over an epoch (up to ~1.4x) come on top.
    Work done between modules (GoogLeNet's concatenations, AlexNet's grouped halves) is not
    counted: those nets needed 1.5-2.2x the low end (1.04-1.27x the high one), so the low end,
    which refuses a run, stays below what every net measured needed.
    """
    leaves = _leaf_outputs(model, shape, dtype)
    if leaves is None:
        return None
    activations, weights = sum(leaves[0]), state_bytes(model)
    return 3 * weights + int(1.2 * activations), 4 * weights + int(2.2 * activations)


def check_fits(model: nn.Module, shape: tuple[int, ...], device: torch.device | str, option: str,
               dtype: torch.dtype = torch.float32) -> None:
    """A one-line :class:`UserError` naming ``option`` when the estimate exceeds available memory."""
    need = forward_bytes(model, shape, dtype)
    have = available_bytes(device)
    if have is not None and need > have:
        where = "free on the GPU" if torch.device(device).type == "cuda" else "available RAM"
        size = "x".join(str(n) for n in shape[-2:])
        raise UserError(f"{option} {size}: a forward pass at this size needs about {need / GiB:,.1f} GiB "
                        f"(estimate), but only {have / GiB:,.1f} GiB is {where}; use a smaller size")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure from torch (CPU or CUDA) or Python."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                              or "not enough memory" in text)
