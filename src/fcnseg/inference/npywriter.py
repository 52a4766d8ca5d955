"""Write a huge ``C x H x W`` ``.npy`` band by band, holding one band of rows in memory.

Tiled inference produces the probabilities of an 8000 x 8000 image tile by tile,
row of tiles after row of tiles. A memory-mapped ``.npy`` would keep every touched
page resident (11 classes x 64 M pixels x 4 bytes = 2.8 GB); this writer instead
buffers the current band of rows for all classes and writes it out, one
contiguous run per class, when the next band starts.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["NpyBandWriter"]


class NpyBandWriter:
    """A write-only ``C x H x W`` float32 array on disk, filled with ``w[:, y0:y1, x0:x1] = block``.

    Writes must come band by band (all blocks of rows ``y0:y1`` before the next rows),
    as :func:`~fcnseg.inference.tiling.predict_tiled` makes them; ``w[...] = array``
    writes everything at once. Call :meth:`close` (or use ``with``) to finish the file.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype=np.float32) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._fh = open(self.path, "wb+")
        np.lib.format.write_array_header_1_0(
            self._fh, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": self.shape})
        self._data_offset = self._fh.tell()
        self._fh.truncate(self._data_offset + int(np.prod(self.shape)) * self.dtype.itemsize)
        self._band: tuple[int, int] | None = None
        self._buf: np.ndarray | None = None

    def __enter__(self) -> "NpyBandWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __setitem__(self, key, value) -> None:
        c, h, w = self.shape
        if key is Ellipsis:
            key = (slice(None), slice(0, h), slice(0, w))
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None)):
            raise IndexError("NpyBandWriter takes [:, y0:y1, x0:x1] or [...]")
        rows, cols = key[1].indices(h), key[2].indices(w)
        band = (rows[0], rows[1])
        if band != self._band:
            self._flush()
            self._band = band
            self._buf = np.zeros((c, band[1] - band[0], w), self.dtype)
        self._buf[:, :, cols[0]:cols[1]] = value

    def _flush(self) -> None:
        if self._band is None or self._buf is None:
            return
        c, h, w = self.shape
        y0 = self._band[0]
        for k in range(c):
            self._fh.seek(self._data_offset + ((k * h + y0) * w) * self.dtype.itemsize)
            self._fh.write(np.ascontiguousarray(self._buf[k]).tobytes())
        self._band, self._buf = None, None

    def close(self) -> None:
        """Write the last band and close the file."""
        if self._fh.closed:
            return
        self._flush()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
