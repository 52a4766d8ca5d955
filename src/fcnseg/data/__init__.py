"""Data sets in their real on-disk layouts, joint transforms, and batching helpers.

``get_dataset(name, root, split, transform)`` is the one entry point used by
training, evaluation and the tools; every data set returns samples as dicts with
``image``, ``label``, ``path`` (and ``depth``, ``hha``, ``label_geo`` where they
exist), class names, a palette and ``ignore_index`` 255.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import default_collate

from ..errors import UserError
from .base import IGNORE_INDEX, SegmentationDataset

__all__ = ["get_dataset", "list_datasets", "SegmentationDataset", "IGNORE_INDEX", "collate"]

# name -> (module, class); modules are imported on first use (scipy only where .mat files are read)
_DATASETS: dict[str, tuple[str, str]] = {
    "camvid": ("camvid", "CamVid"),
    "voc": ("voc", "VOC"),
    "sbd": ("voc", "SBD"),
    "pascal-context": ("context", "PascalContext"),
    "nyud": ("nyud", "NYUDv2"),
    "siftflow": ("siftflow", "SIFTFlow"),
    "folder": ("folder", "FolderDataset"),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset`."""
    return list(_DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    key = name.lower().replace("_", "-")
    key = {"pascalcontext": "pascal-context", "context": "pascal-context", "sift-flow": "siftflow",
           "nyudv2": "nyud"}.get(key, key)
    if key not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; expected one of: {', '.join(_DATASETS)}")
    module, cls = _DATASETS[key]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_dataset(name: str, root: str | Path, split: str, transform: Any = None,
                **kwargs: Any) -> SegmentationDataset:
    """Open data set ``name`` at ``root`` for ``split``; keywords go to the data set class
    (e.g. ``skip_bad=True``; ``year`` for VOC; ``modalities`` for NYUD; ``classes`` for folder)."""
    cls = dataset_class(name)
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        valid = [k for k in params if k not in ("self", "root", "split", "transform")]
        raise UserError(f"unknown option {unknown[0]!r} for dataset {cls.name!r}; expected one of: {', '.join(valid)}")
    return cls(root, split, transform=transform, **kwargs)


def collate(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` that drops samples a ``skip_bad`` data set returned as ``None``.

    Returns ``None`` when every sample of the batch was bad (the loop should skip it).
    """
    good = [s for s in batch if s is not None]
    if not good:
        return None
    return default_collate(good)
