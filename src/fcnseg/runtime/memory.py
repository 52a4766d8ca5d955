"""Will a forward pass fit? An estimate made before allocating, for one-line refusals.

``bench --size 100000x100000`` or ``export --trace-size 100000x100000`` would otherwise die
in the allocator with a traceback (or be killed by the OOM killer). The estimate runs the
net on the ``meta`` device (shapes only, nothing allocated) and adds the input, the two
largest activations a layer holds at once (its input and output) and the output, at the
element size of each tensor, plus the weights. It is an estimate, not a bound: allocator
slack and workspace buffers come on top, so a run may still need somewhat more.
"""
from __future__ import annotations

import itertools
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


def forward_bytes(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak bytes of one inference forward of ``model`` on an input of ``shape``."""
    elem = torch.empty((), dtype=dtype).element_size()
    largest = [0, 0]

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        outs = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
        for t in outs:
            if torch.is_tensor(t):
                largest.append(t.numel() * elem)
                largest.sort(reverse=True)
                del largest[2:]

    weights = param_bytes(model) + sum(t.numel() * t.element_size() for t in model.buffers())
    inputs = elem
    for n in shape:
        inputs *= n
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in itertools.chain(model.named_parameters(), model.named_buffers())}
    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = torch.func.functional_call(model, meta, (torch.empty(shape, dtype=dtype, device="meta"),))
    except Exception:  # a net the meta device cannot run: fall back to input + output-sized maps
        out = None
        largest = [inputs, inputs]
    finally:
        for h in hooks:
            h.remove()
    outs = out.values() if isinstance(out, dict) else [out] if torch.is_tensor(out) else []
    output = sum(t.numel() * elem for t in outs)
    return weights + inputs + sum(largest) + output


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
