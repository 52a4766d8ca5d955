"""fcnseg.imageio: every kind of user image file the issue lists, label PNGs, input expansion."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image

from fcnseg.errors import UserError
from fcnseg.imageio import (
    as_rgb_array,
    collect_image_jobs,
    collect_images,
    read_image,
    read_label_png,
    write_label_png,
    write_rgb_png,
)


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- bad files
def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.jpg: empty file \(0 bytes\)"):
        read_image(p)


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file_is_an_error_not_a_partial_image(tmp_path, fmt, ext, keep):
    data = _encoded(_rgb(120, 160), fmt)
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match=rf"cut.{ext}: truncated"):
        read_image(p)


def test_truncated_header_and_corrupt_data(tmp_path):
    p = tmp_path / "head.png"
    p.write_bytes(_encoded(_rgb(), "PNG")[:30])  # signature + part of IHDR
    with pytest.raises(UserError, match="head.png"):
        read_image(p)
    data = bytearray(_encoded(_rgb(64, 64), "PNG"))
    data[60:200] = bytes(140)  # zeroed compressed pixel data
    q = tmp_path / "corrupt.png"
    q.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt.png"):
        read_image(q)


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 10)
    with pytest.raises(UserError, match=r"notes.jpg: not an image file"):
        read_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="no such image file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(UserError, match="is a folder"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- conversions
def test_rgb_roundtrip_and_writable(tmp_path):
    arr = _rgb()
    p = tmp_path / "a.png"
    p.write_bytes(_encoded(arr, "PNG"))
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, arr)
    out[0, 0] = 0  # users may modify what they get back


def test_16bit_greyscale_png_is_scaled_to_8bit(tmp_path):
    vals = np.array([[0, 257, 65535, 32896, 25700]], dtype=np.uint16)  # 0, 1, 255, 128, 100 in 8 bit
    p = tmp_path / "deep.png"
    Image.fromarray(vals).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")  # really stored as 16 bit
    out = read_image(p)
    assert out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128, 100])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def _png_rgb16(width: int, height: int, rgb16: np.ndarray) -> bytes:
    """A minimal 16-bit-per-channel RGB PNG (Pillow cannot write these)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16bit_rgb_png(tmp_path):
    rgb16 = np.array([[[65535, 0, 32896], [257, 65535, 0]]], dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    p.write_bytes(_png_rgb16(2, 1, rgb16))
    out = read_image(p)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), np.round(rgb16 / 257).astype(int), atol=1)


def test_greyscale_and_bilevel(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    p = tmp_path / "grey.png"
    Image.fromarray(grey).save(p)
    out = read_image(p)
    assert out.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    b = tmp_path / "bw.png"
    Image.fromarray(grey > 100).convert("1").save(b)
    out = read_image(b)
    assert set(np.unique(out)) <= {0, 255} and out.shape == (6, 8, 3)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = [255, 128, 0]
    rgba[1, :, 3] = 255
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = read_image(p)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))  # opaque: colour kept
    np.testing.assert_array_equal(out[0, 2], (0, 0, 0))  # transparent: black
    np.testing.assert_allclose(out[0, 1], np.round(np.array([200, 100, 50]) * 128 / 255), atol=1)
    la = tmp_path / "la.png"
    Image.fromarray(rgba[..., [0, 3]], "LA").save(la)
    out = read_image(la)
    assert out.shape == (2, 3, 3) and tuple(out[0, 2]) == (0, 0, 0) and tuple(out[1, 0]) == (200, 200, 200)


def test_palette_images(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.frombytes("P", (2, 2), idx.tobytes())
    pal = [10, 20, 30, 200, 0, 0, 0, 0, 255] + [0] * (3 * 253)
    im.putpalette(pal)
    p = tmp_path / "pal.png"
    im.save(p)
    out = read_image(p)
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (200, 0, 0))
    np.testing.assert_array_equal(out[1, 0], (0, 0, 255))
    # a palette GIF with a transparent index: that colour becomes black
    g = tmp_path / "pal.gif"
    im.save(g, transparency=1)
    out = read_image(g)
    np.testing.assert_array_equal(out[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, 16:, 0] = 255  # right half: full cyan; left half: no ink (white)
    p = tmp_path / "print.jpg"
    Image.fromarray(cmyk, "CMYK").save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = read_image(p)
    assert out.shape == (16, 32, 3)
    np.testing.assert_allclose(out[8, 4].astype(int), (255, 255, 255), atol=12)
    np.testing.assert_allclose(out[8, 28].astype(int), (0, 255, 255), atol=12)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left red, right blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(p, exif=exif.tobytes(), quality=95)
    out = read_image(p)
    assert out.shape == (40, 20, 3)  # shown upright: portrait
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # top is the former left (red)
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50  # bottom is blue
    # without the tag it is left as stored
    q = tmp_path / "plain.jpg"
    Image.fromarray(arr).save(q, quality=95)
    assert read_image(q).shape == (20, 40, 3)


def test_one_pixel_images(tmp_path):
    for ext in ("png", "jpg", "bmp"):
        p = tmp_path / f"dot.{ext}"
        Image.fromarray(np.full((1, 1, 3), 77, np.uint8)).save(p)
        out = read_image(p)
        assert out.shape == (1, 1, 3)
        assert abs(int(out[0, 0, 0]) - 77) <= 3


def test_float_image_is_refused_and_int32_is_clipped(tmp_path):
    p = tmp_path / "float.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(p)
    with pytest.raises(UserError, match=r"float.tif: floating-point image"):
        read_image(p)
    q = tmp_path / "int32.tif"
    Image.fromarray(np.array([[-5, 65535, 70000]], np.int32)).save(q)
    np.testing.assert_array_equal(read_image(q)[0, :, 0], [0, 255, 255])


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (30, 220)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    out = read_image(p)
    assert out.shape == (4, 4, 3) and abs(int(out[0, 0, 0]) - 30) <= 3


def test_as_rgb_array_inputs(tmp_path):
    rgb = _rgb(5, 6)
    np.testing.assert_array_equal(as_rgb_array(rgb), rgb)
    np.testing.assert_array_equal(as_rgb_array(Image.fromarray(rgb)), rgb)
    p = tmp_path / "x.png"
    Image.fromarray(rgb).save(p)
    np.testing.assert_array_equal(as_rgb_array(p), rgb)
    np.testing.assert_array_equal(as_rgb_array(str(p)), rgb)
    assert as_rgb_array(rgb[..., 0]).shape == (5, 6, 3)
    assert as_rgb_array(rgb[..., :1]).shape == (5, 6, 3)
    rgba = np.concatenate([rgb, np.zeros((5, 6, 1), np.uint8)], axis=2)
    assert as_rgb_array(rgba).max() == 0
    assert as_rgb_array(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    with pytest.raises(UserError, match="dtype float"):
        as_rgb_array(rgb.astype(np.float32) / 255)
    with pytest.raises(UserError, match="shape"):
        as_rgb_array(np.zeros((3, 5, 6), np.uint8)[..., :2])
    with pytest.raises(UserError, match="expected a path"):
        as_rgb_array(12)


# ----------------------------------------------------------------------------- label PNGs
def test_write_label_png_roundtrip(tmp_path):
    label = np.random.default_rng(1).integers(0, 11, (30, 40)).astype(np.uint8)
    pal = np.random.default_rng(2).integers(0, 256, (11, 3)).astype(np.uint8)
    p = write_label_png(tmp_path / "sub" / "lab.png", label, pal)
    with Image.open(p) as im:
        assert im.mode == "P"
        got_pal = np.array(im.getpalette()[: 11 * 3], np.uint8).reshape(11, 3)
        shown = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(got_pal, pal)
    np.testing.assert_array_equal(read_label_png(p), label)  # index = class
    np.testing.assert_array_equal(shown, pal[label])  # colour = palette[class]
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_write_label_png_many_classes_and_int_types(tmp_path):
    label = np.array([[0, 300], [65535, 7]], np.int64)
    p = write_label_png(tmp_path / "big.png", label)
    np.testing.assert_array_equal(read_label_png(p), label)
    small = write_label_png(tmp_path / "small.png", np.array([[1, 2]], np.int64), [[1, 2, 3]])
    np.testing.assert_array_equal(read_label_png(small), [[1, 2]])
    with pytest.raises(ValueError):
        write_label_png(tmp_path / "bad.png", np.zeros((2, 2, 3), np.uint8))


def test_write_rgb_png(tmp_path):
    arr = _rgb()
    p = write_rgb_png(tmp_path / "o.png", arr)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), arr)


# ----------------------------------------------------------------------------- inputs
def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(4, 4)).save(path)
    return path


def test_collect_files_folders_globs(tmp_path):
    a = _touch_image(tmp_path / "data" / "a.jpg")
    b = _touch_image(tmp_path / "data" / "sub" / "b.png")
    _touch_image(tmp_path / "data" / ".hidden.png")
    _touch_image(tmp_path / "data" / ".cache" / "c.png")
    (tmp_path / "data" / "notes.txt").write_text("x")
    single = _touch_image(tmp_path / "one.tif")
    jobs = collect_image_jobs([tmp_path / "data", single])
    assert [(p, s) for p, s in jobs] == [(a, PurePath("a")), (b, PurePath("sub/b")), (single, PurePath("one"))]
    assert collect_images([tmp_path / "data"]) == [a, b]
    globbed = collect_image_jobs([str(tmp_path / "data" / "**" / "*.png")])
    assert globbed == [(b, PurePath("sub/b"))]
    # the same file twice is one job
    assert collect_images([a, str(a), tmp_path / "data"]) == [a, b]


def test_collect_empty_folder_missing_and_unmatched(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="empty: folder contains no image files"):
        collect_images([tmp_path / "empty"])
    with pytest.raises(UserError, match="texts: folder contains no image files"):
        collect_images([tmp_path / "texts"])
    with pytest.raises(UserError, match="no such file or folder"):
        collect_images([tmp_path / "missing.jpg"])
    with pytest.raises(UserError, match="pattern matches no image files"):
        collect_images([str(tmp_path / "*.jpg")])


def test_collect_name_collisions_get_distinct_stems(tmp_path):
    a = _touch_image(tmp_path / "x" / "a.jpg")
    b = _touch_image(tmp_path / "x" / "a.png")
    c = _touch_image(tmp_path / "y" / "a.jpg")
    stems = [s for _, s in collect_image_jobs([a, b, c])]
    assert len(set(stems)) == 3
    assert stems[:2] == [PurePath("a_jpg"), PurePath("a_png")]


def test_explicit_file_with_odd_extension_is_tried(tmp_path):
    p = tmp_path / "photo.data"
    Image.fromarray(_rgb(3, 3)).save(p, "PNG")
    assert collect_images([p]) == [p]
    assert read_image(p).shape == (3, 3, 3)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions as non-root")
def test_unreadable_file(tmp_path):
    p = _touch_image(tmp_path / "locked.png")
    p.chmod(0)
    try:
        with pytest.raises(UserError, match="locked.png: cannot read"):
            read_image(p)
    finally:
        p.chmod(0o644)


def test_permission_denied_is_a_user_error(tmp_path, monkeypatch):
    """As root chmod does not lock a file, so the OS error is simulated at the open call."""
    import PIL.Image

    p = _touch_image(tmp_path / "locked.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(PIL.Image, "open", deny)
    with pytest.raises(UserError, match=r"locked.png: cannot read \(permission denied\)"):
        read_image(p)
