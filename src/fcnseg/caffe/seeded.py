"""The seeded recipe behind the real-Caffe goldens (``tests/goldens/caffe``).

Why: the goldens compare fcnseg with the reference Caffe on every reference net, but
storing 134M-parameter weights per net is out of the question. Both sides instead
regenerate the same parameters and inputs from a seed with this module: Caffe (in
``scripts/caffe_goldens.py``, run by Debian's python3 with pycaffe) and the tests (with
fcnseg). It depends on numpy only and on no other fcnseg module, so the generator loads
it by file path without importing torch.

The recipe (numpy's legacy ``RandomState``, whose streams numpy keeps stable across
versions):

- blob ``i`` of layer ``L`` (Caffe's blob order: 0 weight, 1 bias) with ``n`` values is
  ``u = RandomState((seed + crc32("L/i")) % 2**32).randint(0, 2**16, n, dtype=uint16)``,
  in float32 ``(u - 32767.5) * float32(sqrt(3) * scale / 32768)`` (+ offset), reshaped to
  the blob's Caffe shape: uniform values of standard deviation ``scale`` (uniform 16-bit
  integers rather than normal values because they are ~20x faster to draw, which
  matters for 134M-parameter nets), with a scale chosen so activations stay O(1):
  weights of Convolution / InnerProduct: ``sqrt(2 / fan_in)``, fan_in = product of the
  shape's dimensions after the first (He); weights of Deconvolution
  (``C_in x C_out/group x k x k``): ``sqrt(1 / (4 C_in))`` (each output pixel of an FCN
  upsampling deconvolution, k = 2 x stride, sums about 4 C_in products); Scale blobs:
  offset 1, scale 0.1; every other blob (biases): scale 0.1.
- input blob ``B`` at height H and width W is
  ``RandomState((seed + crc32("input/B/HxW")) % 2**32).standard_normal((1, C, H, W))``
  times 50, cast to float32 (pixel-like values, as BGR minus the mean).

Keying by layer name means nets that share a layer name and shape share its values.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

SEED = 17
INPUT_SCALE = 50.0
UNIFORM_STD = 3.0 ** 0.5  # (u - 32767.5) / 32768 is uniform on (-1, 1): standard deviation 1 / sqrt(3)


def stream_seed(key: str, seed: int = SEED) -> int:
    """The RandomState seed of one stream: ``(seed + crc32(key)) mod 2**32``."""
    return (int(seed) + zlib.crc32(key.encode("utf-8"))) % 2 ** 32


def blob_scale(kind: str, index: int, shape: Sequence[int]) -> tuple[float, float]:
    """``(multiplier, offset)`` for blob ``index`` of a ``kind`` layer of this ``shape``."""
    shape = tuple(int(d) for d in shape)
    if kind == "Scale":
        return 0.1, 1.0
    if index == 0 and len(shape) > 1:
        if kind == "Deconvolution":
            return float(np.sqrt(1.0 / (4 * shape[0]))), 0.0
        return float(np.sqrt(2.0 / int(np.prod(shape[1:])))), 0.0
    return 0.1, 0.0


def seeded_blob(layer: str, index: int, kind: str, shape: Sequence[int], seed: int = SEED) -> np.ndarray:
    """Blob ``index`` of layer ``layer`` (Caffe type ``kind``) as the recipe makes it."""
    shape = tuple(int(d) for d in shape)
    rs = np.random.RandomState(stream_seed(f"{layer}/{index}", seed))
    values = rs.randint(0, 2 ** 16, int(np.prod(shape)), dtype=np.uint16).astype(np.float32)
    mult, offset = blob_scale(kind, index, shape)
    values -= np.float32(32767.5)  # exact in float32
    values *= np.float32(UNIFORM_STD * mult / 32768.0)  # one rounding: the same on every machine
    if offset:
        values += np.float32(offset)
    return values.reshape(shape)


def seeded_input(blob: str, shape: Sequence[int], seed: int = SEED) -> np.ndarray:
    """Input blob ``blob`` (N x C x H x W) as the recipe makes it."""
    shape = tuple(int(d) for d in shape)
    h, w = shape[-2:]
    rs = np.random.RandomState(stream_seed(f"input/{blob}/{h}x{w}", seed))
    return (rs.standard_normal(shape) * INPUT_SCALE).astype(np.float32)


def stored_view(blob: np.ndarray, max_pixels: int, all_channels: bool = False) -> tuple[np.ndarray, list[int], int]:
    """What a golden keeps of a 1 x C x H x W blob: ``(values, channels, stride)``.

    Channels: all when ``C <= 3`` or ``all_channels``, else ``[0, C // 2, C - 1]``.
    Pixels: rows and columns ``0, s, 2s, ...`` with the smallest stride ``s`` that keeps
    at most ``max_pixels`` pixels (1: the full map). Since the nets' weights are random,
    a one-pixel shift anywhere in the net changes every stored value.
    """
    c, h, w = blob.shape[1:]
    channels = list(range(c)) if (c <= 3 or all_channels) else [0, c // 2, c - 1]
    stride = 1
    while -(-h // stride) * -(-w // stride) > max_pixels:
        stride += 1
    return np.ascontiguousarray(blob[0, channels, ::stride, ::stride]), channels, stride
