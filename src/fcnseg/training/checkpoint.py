"""Checkpoints that are written atomically and never load silently when damaged.

A checkpoint file is an ordinary ``torch.save`` archive holding
``{"format", "sha256", "payload"}``: the payload is the real state serialised by
``torch.save`` and kept as a uint8 tensor, and ``sha256`` is its digest. A
truncated file fails to open; a flipped byte fails the digest. Either way the
user gets one clear line, not a half-loaded model. Only plain types and tensors
are stored, so ``torch.load(weights_only=True)`` reads it safely.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

FORMAT = "fcnseg-checkpoint-v1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else exc.__class__.__name__


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    wrapper = {
        "format": FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(wrapper, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, killed mid-write: no half file left beside the good one
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def is_torchscript_archive(path: str | Path) -> bool:
    """A ``torch.jit.save`` archive (a zip with ``code/`` and ``constants.pkl``), not a checkpoint."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_weights_only(path: str | Path, what: str = "checkpoint",
                      map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with its failures as one line: a pickle that
    names Python objects beyond tensors and plain containers (it could run code when loaded
    unsafely) is *refused*; a damaged file is *corrupt or truncated*."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            detail = next((line.strip() for line in str(exc).splitlines()
                           if "GLOBAL" in line or "Unsupported" in line), "")
            raise UserError(f"{path}: refused: not a weights-only file ({detail or 'it holds Python objects'}; "
                            "loading it could run code, so fcnseg does not)") from None
        raise UserError(f"{path}: corrupt or truncated {what} ({_first_line(exc)})") from None
    except Exception as exc:
        raise UserError(f"{path}: corrupt or truncated {what} ({_first_line(exc)})") from None


def served_weights(ckpt: dict[str, Any]) -> Any:
    """The weights a checkpoint serves for inference and ``init_from``: the running average of
    the weights when the run kept one (``ema_decay``), else the trained weights. The trained
    weights stay under ``model`` for ``--resume``."""
    ema = ckpt.get("ema")
    return ema["model"] if isinstance(ema, dict) and "model" in ema else ckpt["model"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_file() and is_torchscript_archive(path):
        raise UserError(f"{path}: a TorchScript archive (written by `fcnseg export --format torchscript`), not a "
                        "training checkpoint; `fcnseg predict --model` runs it, training needs last.pt or "
                        "a .safetensors weights file")
    wrapper = load_weights_only(path, "checkpoint")
    if not isinstance(wrapper, dict) or wrapper.get("format") != FORMAT:
        raise UserError(f"{path}: not an fcnseg training checkpoint (expected format {FORMAT})")
    payload_t = wrapper.get("payload")
    if not torch.is_tensor(payload_t) or not isinstance(wrapper.get("sha256"), str):
        raise UserError(f"{path}: not an fcnseg training checkpoint (no payload/sha256 entries)")
    payload = payload_t.numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != wrapper["sha256"]:
        raise UserError(f"{path}: checkpoint is corrupt (SHA-256 mismatch); use an earlier checkpoint")
    try:  # the digest proves integrity, not origin: the payload is still loaded weights-only
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: checkpoint payload is not loadable safely "
                        f"({_first_line(exc)})") from None

