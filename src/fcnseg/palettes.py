"""The PASCAL VOC colour map: the data sets' default class colours and :mod:`fcnseg.viz`'s.

A module of its own at the bottom of the import graph: the data sets colour their classes
with it, and :mod:`fcnseg.viz` both re-exports it and reads the data sets' own palettes.
"""
from __future__ import annotations

import numpy as np

__all__ = ["voc_palette"]


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (``VOClabelcolormap.m`` of the VOC devkit) for ``n`` classes.

    Bits 0, 1, 2 of the class index go to the top bit of R, G, B, the next three bits
    to the next bit, and so on; class 0 is black, 1 is (128, 0, 0), 255 is (224, 224, 192).
    Distinct for up to 2**24 classes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ids = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for c in range(3):
            cmap[:, c] |= ((ids >> (3 * j + c)) & 1) << (7 - j)
    return cmap.astype(np.uint8)
