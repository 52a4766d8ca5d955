"""The trained models shipped inside the package, and which one is the default.

Kept free of torch so that the command line can name the default in its help text
without importing the runtime.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "WEIGHTS_DIR", "list_shipped_models", "shipped_weights_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the shipped model that ``fcnseg predict``, ``eval`` and ``demo`` use when no ``--model`` is given
DEFAULT_MODEL = "camvid-fcn8s-lite2-up15"


def list_shipped_models() -> list[str]:
    """Names of the trained models shipped inside the package (``fcnseg/weights/*.safetensors``)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def shipped_weights_path(name: str) -> Path:
    """Where the shipped model ``name`` lives (whether or not it is installed)."""
    return WEIGHTS_DIR / f"{name}.safetensors"
