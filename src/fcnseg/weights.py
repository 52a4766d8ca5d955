"""The fcnseg weights file: safetensors with the model's description in its metadata.

A weights file is self-describing: ``{"fcnseg": json}`` metadata records the model
name, class count, class names, palette, normalisation and build options, so that
``load_model(path)`` rebuilds the right network and preprocesses as it was trained.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

META_KEY = "fcnseg"


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path, meta: dict[str, Any],
                 dtype: torch.dtype | None = None) -> Path:
    """Write ``state_dict`` and ``meta`` atomically (temp file + fsync + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The fcnseg metadata of a weights file (empty dict if it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise UserError(f"{path}: no such weights file") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path}: not a readable safetensors weights file ({exc})") from None
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file: ``(state_dict as float32, meta)``."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path}: corrupt or truncated weights file ({exc})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, meta


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``state`` (a state dict, or an optimiser state:
    nested dicts and lists) that hold NaN or inf."""
    bad: list[str] = []
    if torch.is_tensor(state):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "tensor")
    elif isinstance(state, dict):
        for key, value in state.items():
            bad += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            bad += nonfinite_tensors(value, f"{prefix}[{i}]")
    return bad


def check_finite(state: Any, source: str) -> None:
    """Refuse weights that hold NaN/inf: such a net outputs garbage (an all-zero label map)
    without any other sign that something went wrong."""
    bad = nonfinite_tensors(state)
    if bad:
        raise UserError(f"{source}: {len(bad)} tensor(s) hold NaN or inf values, e.g. {bad[0]}; "
                        "these weights come from a diverged run and are refused")
