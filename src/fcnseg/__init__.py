"""fcnseg: Fully Convolutional Networks for semantic segmentation.

The exact reference FCNs of Long, Shelhamer and Darrell (CVPR 2015) plus modern
backbones, with training, evaluation, inference and export. Heavy submodules are
imported lazily so that ``import fcnseg`` and the CLI start fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_model", "list_models", "load_model", "UserError"]

from .errors import UserError
from .runtime.allocator import request_huge_pages

request_huge_pages()  # before torch's first allocation: see fcnseg.runtime.allocator (FCNSEG_MALLOC=system opts out)


def __getattr__(name: str) -> Any:
    if name in ("get_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "load_model":
        from .inference import load_model

        return load_model
    raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
