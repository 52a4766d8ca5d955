"""The caffemodel wire-format reader/writer: round trips, legacy formats, zero copy, bad files."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from fcnseg.caffe.caffemodel import Blob, iter_caffemodel, read_caffemodel, write_caffemodel
from fcnseg.errors import UserError


def _layers(rng: np.random.Generator) -> dict[str, tuple[str, list[np.ndarray]]]:
    return {
        "conv1": ("Convolution", [rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
                                  rng.standard_normal(8, dtype=np.float32)]),
        "relu1": ("ReLU", []),
        "up": ("Deconvolution", [rng.standard_normal((4, 2, 4, 4), dtype=np.float32)]),
        "scale": ("Scale", [rng.standard_normal(5, dtype=np.float32)]),
        "fc": ("InnerProduct", [rng.standard_normal((6, 10), dtype=np.float32),
                                rng.standard_normal(6, dtype=np.float32)]),
    }


def _check_same(layers, read, legacy: bool) -> None:
    assert [layer.name for layer in read] == list(layers)
    for layer in read:
        kind, blobs = layers[layer.name]
        assert layer.type == kind and layer.legacy == legacy
        assert len(layer.blobs) == len(blobs)
        for blob, ref in zip(layer.blobs, blobs):
            assert blob.legacy == legacy
            assert blob.fits(ref.shape)
            np.testing.assert_array_equal(blob.data.reshape(ref.shape), ref)


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip(tmp_path, legacy):
    layers = _layers(np.random.default_rng(0))
    if legacy:
        del layers["scale"]  # V1 layers have no Scale type
    path = write_caffemodel(tmp_path / "m.caffemodel", layers, legacy=legacy, name="net")
    _check_same(layers, read_caffemodel(path), legacy)
    if legacy:  # old files store 4-D num/channels/height/width
        fc = read_caffemodel(path)[-1]
        assert fc.blobs[0].shape == (1, 1, 6, 10) and fc.blobs[1].shape == (1, 1, 1, 6)
        assert fc.blobs[0].squeezed_shape() == (6, 10)


def test_double_data(tmp_path):
    layers = {"c": ("Convolution", [np.arange(6, dtype=np.float64).reshape(2, 3) / 7])}
    path = write_caffemodel(tmp_path / "d.caffemodel", layers, double=True)
    (layer,) = read_caffemodel(path)
    assert layer.blobs[0].data.dtype == np.float64
    np.testing.assert_array_equal(layer.blobs[0].data, layers["c"][1][0])


def test_blobs_are_zero_copy_views_of_the_mapped_file(tmp_path):
    layers = _layers(np.random.default_rng(1))
    path = write_caffemodel(tmp_path / "m.caffemodel", layers)
    blob = read_caffemodel(path)[0].blobs[0].data
    assert not blob.flags.owndata and not blob.flags.writeable
    base = blob
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def test_streamed_iteration_is_lazy(tmp_path):
    layers = _layers(np.random.default_rng(2))
    path = write_caffemodel(tmp_path / "m.caffemodel", layers)
    path.write_bytes(path.read_bytes()[:-3])  # damage the last layer only
    it = iter_caffemodel(path)
    assert next(it).name == "conv1"  # earlier layers decode before the damage is reached
    with pytest.raises(UserError):
        list(it)


def test_legacy_shape_rule():
    blob = Blob(np.zeros((1, 1, 4, 6), np.float32), legacy=True)
    assert blob.fits((4, 6)) and blob.fits((1, 4, 6)) and not blob.fits((6, 4)) and not blob.fits((24,))
    assert not Blob(np.zeros((1, 1, 4, 6), np.float32)).fits((4, 6))  # only legacy blobs pad


@pytest.mark.parametrize("cut", [1, 7, 100, 1000])
def test_truncated_file(tmp_path, cut):
    layers = _layers(np.random.default_rng(3))
    path = write_caffemodel(tmp_path / "m.caffemodel", layers)
    data = path.read_bytes()
    short = tmp_path / "short.caffemodel"
    short.write_bytes(data[: len(data) - cut])
    with pytest.raises(UserError, match=r"short\.caffemodel: truncated or corrupt caffemodel"):
        read_caffemodel(short)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b'layer {\n  name: "conv1"\n  type: "Convolution"\n}\n', "looks like a text file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a caffemodel"),
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "HDF5"),
    (b"\x0a\x03net", "no layers found"),  # a valid NetParameter with only a name
])
def test_not_a_caffemodel(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_caffemodel(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such caffemodel"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(UserError, match="directory"):
        read_caffemodel(tmp_path)


def test_blob_with_wrong_value_count_is_rejected(tmp_path):
    # BlobProto{shape{dim:2 dim:3} data:[5 floats]} inside layer "x"
    shape = b"\x3a\x04" + b"\x0a\x02\x02\x03"
    data = b"\x2a\x14" + np.zeros(5, "<f4").tobytes()
    blob = shape + data
    layer = b"\x0a\x01x" + b"\x12\x01C" + b"\x3a" + bytes([len(blob)]) + blob
    path = tmp_path / "count.caffemodel"
    path.write_bytes(b"\xa2\x06" + bytes([len(layer)]) + layer)  # field 100, wire type 2
    with pytest.raises(UserError, match=r"layer 'x' has shape 2x3 \(6 values\) but 5 values"):
        read_caffemodel(path)
