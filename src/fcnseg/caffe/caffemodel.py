"""Read and write binary ``.caffemodel`` files (protobuf wire format) without Caffe.

Why our own decoder: the reference weights are ``NetParameter`` protobufs and the
``protobuf`` package would need a compiled ``caffe.proto``. We only need layer
names, types and blobs, which a short wire-format walker gets.

Memory: the file is memory-mapped and every blob is a zero-copy ``np.frombuffer``
view into the mapping, so a 500 MB caffemodel is not held twice; the converter copies
each blob once, into the model's parameter. The mapping stays alive as long as any
blob array refers to it.

What is understood (field numbers from caffe.proto):

- ``NetParameter``: ``layer`` = 100 (``LayerParameter``), legacy ``layers`` = 2
  (``V1LayerParameter``; its nested V0 ``layer`` = 1 as well).
- ``LayerParameter``: name = 1, type = 2, blobs = 7. ``V1LayerParameter``: name = 4,
  type = 5 (enum), blobs = 6. ``V0LayerParameter``: name = 1, type = 2, blobs = 50.
- ``BlobProto``: shape = 7 (``BlobShape``: dim = 1, packed int64), data = 5 (packed
  float), double_data = 8, legacy num/channels/height/width = 1..4.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..errors import UserError
from .prototxt import V1_TYPES

_V1_NAME_BY_NUMBER = {num: name for num, name in V1_TYPES.values()}
_V1_NUMBER_BY_NAME = {name: num for num, name in V1_TYPES.values() if name}

# NetParameter fields and their wire types (2 = length-delimited, 0 = varint).
_NET_FIELDS = {1: (2,), 2: (2,), 3: (2,), 4: (0, 2), 5: (0,), 6: (2,), 7: (0,), 8: (2,), 100: (2,)}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class Blob:
    """One parameter blob: ``data`` is a read-only array view of the file, already shaped.

    ``legacy`` is True when the shape came from the deprecated 4-D num/channels/height/
    width fields (old caffemodels such as the ILSVRC VGG16 one): then Caffe's rule
    applies, a target shape matches when left-padded with ones to 4-D it is equal.
    """

    data: np.ndarray
    legacy: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether this blob can be copied into a tensor of ``shape`` (Caffe's ShapeEquals)."""
        shape = tuple(int(s) for s in shape)
        if shape == self.shape:
            return True
        if self.legacy and len(shape) <= 4:
            return (1,) * (4 - len(shape)) + shape == self.shape
        return False

    def squeezed_shape(self) -> tuple[int, ...]:
        """The shape without the leading ones that legacy 4-D blobs carry."""
        shape = self.shape
        if self.legacy:
            while len(shape) > 1 and shape[0] == 1:
                shape = shape[1:]
        return shape


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)
    legacy: bool = False  # came from the V1 ``layers`` field


class _Corrupt(Exception):
    def __init__(self, what: str, pos: int, truncated: bool = False) -> None:
        super().__init__(what)
        self.what, self.pos, self.truncated = what, pos, truncated


class _Reader:
    """Protobuf wire-format walker over a buffer (bytes, mmap); positions are absolute."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self.view = memoryview(buf)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        view, result, shift = self.view, 0, 0
        while True:
            if pos >= end:
                raise _Corrupt("varint runs past the end of its message", pos, truncated=True)
            b = view[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise _Corrupt("varint longer than 10 bytes", pos)

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(field number, wire type, value or payload start, payload end)``."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _Corrupt("field number 0", pos)
            if wire == 0:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
            elif wire == 2:
                length, p = self.varint(pos, end)
                if p + length > end:
                    raise _Corrupt(f"field {number} of {length} bytes runs past the end", pos,
                                   truncated=True)
                yield number, wire, p, p + length
                pos = p + length
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if pos + size > end:
                    raise _Corrupt(f"fixed-size field {number} runs past the end", pos, truncated=True)
                yield number, wire, pos, pos + size
                pos += size
            else:
                raise _Corrupt(f"wire type {wire} (field {number}) is not used by caffemodels", pos)

    def string(self, start: int, end: int) -> str:
        return bytes(self.view[start:end]).decode("utf-8", errors="replace")

    def packed_varints(self, start: int, end: int) -> list[int]:
        out, pos = [], start
        while pos < end:
            value, pos = self.varint(pos, end)
            out.append(value - (1 << 64) if value >= 1 << 63 else value)
        return out


def _blob(r: _Reader, start: int, end: int, layer: str) -> Blob:
    dims: list[int] | None = None
    legacy = [0, 0, 0, 0]
    chunks: dict[str, list[np.ndarray]] = {"f4": [], "f8": []}
    for number, wire, a, b in r.fields(start, end):
        if number == 7 and wire == 2:  # BlobShape
            dims = []
            for n2, w2, a2, b2 in r.fields(a, b):
                if n2 == 1 and w2 == 2:
                    dims += r.packed_varints(a2, b2)
                elif n2 == 1 and w2 == 0:
                    dims.append(a2 - (1 << 64) if a2 >= 1 << 63 else a2)
        elif number in (5, 8):
            kind, size = ("f4", 4) if number == 5 else ("f8", 8)
            if wire == 2:
                if (b - a) % size:
                    raise _Corrupt(f"blob data of layer {layer!r} is not a whole number of values", a)
                chunks[kind].append(np.frombuffer(r.buf, dtype="<" + kind, count=(b - a) // size, offset=a))
            elif wire == (5 if size == 4 else 1):  # unpacked, one value per field
                chunks[kind].append(np.frombuffer(r.buf, dtype="<" + kind, count=1, offset=a))
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number - 1] = a
    kind = "f4" if chunks["f4"] or not chunks["f8"] else "f8"
    parts = chunks[kind]
    data = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.zeros(0, "<f4"))
    is_legacy = dims is None
    shape = tuple(legacy) if is_legacy else tuple(dims)  # type: ignore[arg-type]
    if any(d < 0 for d in shape):
        raise _Corrupt(f"blob of layer {layer!r} has a negative dimension {shape}", start)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if is_legacy and count == 0 and data.size:
        shape, count = (data.size,), data.size  # very old blobs without any dimension
    if count != data.size:
        raise _Corrupt(f"blob of layer {layer!r} has shape {'x'.join(map(str, shape))} "
                       f"({count} values) but {data.size} values", start)
    if kind == "f8" and chunks["f4"]:
        raise _Corrupt(f"blob of layer {layer!r} mixes float and double data", start)
    return Blob(data.reshape(shape), legacy=is_legacy)


def _layer(r: _Reader, start: int, end: int, v1: bool) -> CaffeLayer:
    name, kind, blobs = "", "", []
    blob_spans: list[tuple[int, int]] = []
    name_no, type_no, blobs_no = (4, 5, 6) if v1 else (1, 2, 7)
    for number, wire, a, b in r.fields(start, end):
        if number == name_no and wire == 2:
            name = r.string(a, b)
        elif number == type_no:
            if v1 and wire == 0:
                kind = _V1_NAME_BY_NUMBER.get(a, f"V1 type {a}")
            elif not v1 and wire == 2:
                kind = r.string(a, b)
        elif number == blobs_no and wire == 2:
            blob_spans.append((a, b))
        elif v1 and number == 1 and wire == 2:  # V0LayerParameter inside a V1 layer
            v0 = _layer_v0(r, a, b)
            name, kind = name or v0.name, kind or v0.type
            blobs += v0.blobs
    blobs += [_blob(r, a, b, name) for a, b in blob_spans]
    return CaffeLayer(name, kind, blobs, legacy=v1)


def _layer_v0(r: _Reader, start: int, end: int) -> CaffeLayer:
    name, kind, spans = "", "", []
    for number, wire, a, b in r.fields(start, end):
        if number == 1 and wire == 2:
            name = r.string(a, b)
        elif number == 2 and wire == 2:
            kind = r.string(a, b)
        elif number == 50 and wire == 2:
            spans.append((a, b))
    return CaffeLayer(name, kind, [_blob(r, a, b, name) for a, b in spans], legacy=True)


def _open(path: Path):
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise UserError(f"{path}: empty file, not a caffemodel")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise UserError(f"{path}: no such caffemodel file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a .caffemodel file") from None
    except (PermissionError, ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot read the caffemodel ({exc})") from None


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= c < 127 or c in (9, 10, 13) for c in head)


def iter_caffemodel(path: str | Path) -> Iterator[CaffeLayer]:
    """Yield the layers of a caffemodel one by one, in file order (streamed, zero-copy blobs).

    Raises :class:`UserError` for a missing, truncated or non-caffemodel file.
    """
    path = Path(path)
    buf = _open(path)
    head = bytes(buf[:64])
    if head.startswith(_HDF5_MAGIC):
        raise UserError(f"{path}: is an HDF5 file (.caffemodel.h5); only binary protobuf caffemodels "
                        "are supported")
    r = _Reader(buf)
    found = 0
    try:
        for number, wire, a, b in r.fields(0, len(buf)):
            if number not in _NET_FIELDS or wire not in _NET_FIELDS[number]:
                raise _Corrupt(f"field {number} (wire type {wire}) is not part of a Caffe NetParameter", a)
            if number in (2, 100):
                found += 1
                yield _layer(r, a, b, v1=number == 2)
    except _Corrupt as exc:
        if exc.truncated:
            raise UserError(f"{path}: truncated or corrupt caffemodel ({exc.what}, "
                            f"byte {exc.pos} of {len(buf)})") from None
        hint = " (it looks like a text file, e.g. a prototxt)" if _looks_like_text(head) else ""
        raise UserError(f"{path}: not a caffemodel{hint}: {exc.what} at byte {exc.pos}") from None
    if not found:
        hint = " (it looks like a text file, e.g. a prototxt)" if _looks_like_text(head) else ""
        raise UserError(f"{path}: not a caffemodel{hint}: no layers found")


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """All layers of a caffemodel (blobs are zero-copy views of the memory-mapped file)."""
    return list(iter_caffemodel(path))


# ---------------------------------------------------------------------------- writing
def _varint_bytes(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


def _delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint_bytes(len(payload)) + payload


def _blob_parts(array: np.ndarray, legacy: bool, double: bool) -> tuple[bytes, np.ndarray]:
    """(everything of the BlobProto but the raw values, the values as little-endian array)."""
    arr = np.ascontiguousarray(array, dtype="<f8" if double else "<f4")
    if legacy:
        if arr.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 dimensions, got shape {arr.shape}")
        dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
        head = b"".join(_key(i + 1, 0) + _varint_bytes(int(d)) for i, d in enumerate(dims))
    else:
        packed = b"".join(_varint_bytes(int(d)) for d in arr.shape)
        head = _delimited(7, _delimited(1, packed) if arr.ndim else b"")
    head += _key(8 if double else 5, 2) + _varint_bytes(arr.nbytes)
    return head, arr


def write_caffemodel(path: str | Path, layers: Mapping[str, tuple[str, Sequence[np.ndarray]]], *,
                     legacy: bool = False, name: str | None = None, double: bool = False) -> Path:
    """Write ``{layer name: (type, [blobs])}`` as a binary caffemodel (atomically).

    ``legacy=True`` writes the V1 ``layers`` field with 4-D num/channels/height/width
    blob dimensions, as old caffemodels (ILSVRC VGG16, CaffeNet) have them; ``double``
    stores ``double_data`` instead of ``data``. Values are streamed to the file, not
    assembled in memory.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        if name:
            fh.write(_delimited(1, name.encode()))
        for layer_name, (kind, blobs) in layers.items():
            if legacy:
                if kind not in _V1_NUMBER_BY_NAME:
                    raise ValueError(f"layer {layer_name!r}: type {kind!r} has no legacy V1 enum value")
                head = _delimited(4, layer_name.encode()) + _key(5, 0) + _varint_bytes(_V1_NUMBER_BY_NAME[kind])
            else:
                head = _delimited(1, layer_name.encode()) + _delimited(2, kind.encode())
            parts = [_blob_parts(np.asarray(b), legacy, double) for b in blobs]
            blob_field = 6 if legacy else 7
            sizes = [len(h) + a.nbytes for h, a in parts]
            payload_len = len(head) + sum(len(_key(blob_field, 2)) + len(_varint_bytes(s)) + s for s in sizes)
            fh.write(_key(2 if legacy else 100, 2) + _varint_bytes(payload_len) + head)
            for (blob_head, arr), size in zip(parts, sizes):
                fh.write(_key(blob_field, 2) + _varint_bytes(size) + blob_head)
                fh.write(memoryview(arr.reshape(-1)).cast("B"))
    os.replace(tmp, path)
    return path
