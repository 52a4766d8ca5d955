"""Reading users' images robustly, writing label maps, and expanding input arguments.

Users point ``fcnseg predict`` at whatever they have: phone photos with an EXIF
rotation, scans in CMYK, 16-bit PNGs from cameras, screenshots with alpha, palette
GIFs, half-downloaded files. :func:`read_image` turns every image whose meaning is
clear into RGB ``uint8 H x W x 3`` and raises :class:`~fcnseg.errors.UserError`
(one line naming the file and the problem) for the rest, so that a batch run can
report the file and go on with the others.

Conversion rules (the documented policy):

* EXIF orientation is applied, as image viewers do (the array is what people see).
* Greyscale (``L``, ``1``) is replicated to three channels.
* 16-bit images (``I;16``, ``I``) are scaled to 8 bit (``round(v / 257)``, so
  65535 -> 255); ``I`` values are clipped to 0..65535 first.
* Alpha (``RGBA``, ``LA``, palette with transparency) is composited on black:
  fully transparent pixels become black, opaque pixels keep their colour. Without
  this, transparent areas would show whatever RGB happens to be stored there.
* Palette images are expanded through their palette.
* CMYK (e.g. print JPEGs) is converted through its embedded ICC profile when there
  is one, otherwise with Pillow's plain CMYK->RGB formula.
* Multi-frame files (GIF, TIFF) use their first frame.
* Floating-point images (``F``) have no agreed 8-bit range: refused with a message.
* Truncated files are refused (no partial images), as are 0-byte and non-image files.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import io
import os
import re
import warnings
from pathlib import Path, PurePath
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS", "read_image", "pil_to_rgb", "as_rgb_array", "read_label_png", "write_label_png",
    "write_rgb_png", "atomic_write", "collect_images", "collect_image_jobs", "set_max_pixels", "pixel_limit",
    "LargeImageWarning",
]

#: file name endings taken as images when a folder or glob is expanded (explicit files are always tried)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                              ".ppm", ".pgm", ".pnm", ".pbm", ".tga", ".jp2", ".j2k"})


class LargeImageWarning(UserWarning):
    """An image above the pixel limit (but under twice it) is decoded anyway; said in one line."""


def set_max_pixels(limit: int | None, name: str = "--max-pixels") -> None:
    """The pixel limit for reading images (Pillow's guard against decompression bombs, which
    :func:`read_image` enforces in its own words): above it a :class:`LargeImageWarning`,
    above twice it a :class:`UserError`. ``None`` restores Pillow's default (89,478,485).
    ``name``: how a bad value's error names the setting."""
    from PIL import Image

    if limit is not None and limit < 1:
        raise UserError(f"{name} must be >= 1, got {limit}")
    Image.MAX_IMAGE_PIXELS = _PILLOW_DEFAULT_MAX if limit is None else int(limit)


@contextlib.contextmanager
def pixel_limit(limit: int | None, name: str = "max_pixels") -> Iterator[None]:
    """:func:`set_max_pixels` for the ``with`` block only, the previous limit restored after
    (``None``: the limit is left as it is). Pillow's limit is process-wide, so this is how a
    library call (``Segmenter.predict_files(max_pixels=)``) raises it for its own reads."""
    from PIL import Image

    if limit is None:
        yield
        return
    before = Image.MAX_IMAGE_PIXELS
    set_max_pixels(limit, name)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _pillow_default_max() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0)


_PILLOW_DEFAULT_MAX = _pillow_default_max()


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Pillow's rule (warn above the limit, refuse above twice it), said as fcnseg does."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    n = size[0] * size[1]
    if not limit or n <= limit:
        return
    if n > 2 * limit:
        raise UserError(f"{path}: {size[0]}x{size[1]} = {n:,} pixels, more than twice the {limit:,}-pixel limit; "
                        "refused as a possible decompression bomb (if you trust the file, raise the limit "
                        f"with --max-pixels {n})")
    warnings.warn(f"{path}: {size[0]}x{size[1]} = {n:,} pixels, above the {limit:,}-pixel limit; decoding it "
                  f"anyway (twice the limit is refused; --max-pixels raises it)", LargeImageWarning, stacklevel=3)


# --------------------------------------------------------------------------- reading
def read_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """The image file ``path`` as RGB ``uint8`` ``H x W x 3``, as a viewer would show it.

    ``exif=False`` keeps the stored pixel grid (no EXIF rotation): data sets use it,
    because their label maps are drawn on the stored grid, not the displayed one.

    Raises :class:`UserError` naming the file for a missing, empty, truncated,
    corrupt or non-image file, or one whose pixel values have no clear 8-bit meaning.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot access ({exc.strerror or exc})") from None
    if size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():  # said by _check_pixels in fcnseg's words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            _check_pixels(path, im.size)
            im.load()  # decode now: a truncated file raises here rather than giving a partial image
            return pil_to_rgb(im, name=str(path), exif=exif)
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"{path}: cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as exc:  # raised by Image.open, before _check_pixels
        found = re.search(r"\((\d+) pixels\)", str(exc))
        n = int(found.group(1)) if found else None
        raise UserError(f"{path}: {f'{n:,} pixels, ' if n else ''}more than twice the "
                        f"{Image.MAX_IMAGE_PIXELS:,}-pixel limit; refused as a possible decompression bomb (if you "
                        f"trust the file, raise the limit with --max-pixels {n or 'N'})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or exc.__class__.__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise UserError(f"{path}: truncated or incomplete image file ({msg})") from None
        raise UserError(f"{path}: corrupt image file ({msg})") from None


def pil_to_rgb(im, name: str = "image", exif: bool = True) -> np.ndarray:
    """A PIL image as RGB ``uint8`` ``H x W x 3`` with the conversion rules of this module
    (``exif=False``: no EXIF rotation)."""
    from PIL import ImageOps

    if exif:
        try:
            im = ImageOps.exif_transpose(im) or im
        except Exception:  # a malformed EXIF block must not make the pixels unreadable
            pass
    mode = im.mode
    if mode == "RGB":
        arr = np.array(im, dtype=np.uint8)  # a writable copy, not a view of PIL's buffer
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(im)
        if mode == "I":
            raw = np.clip(raw, 0, 65535)
        grey = np.round(raw.astype(np.float32) / 257.0).astype(np.uint8)
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "F":
        raise UserError(f"{name}: floating-point image (mode F) has no defined 8-bit range; "
                        "save it as 8- or 16-bit")
    elif mode == "CMYK":
        arr = np.array(_cmyk_to_rgb(im), dtype=np.uint8)
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        if mode in ("La", "RGBa"):  # already premultiplied
            arr = rgba[:, :, :3].copy()
        else:
            alpha = rgba[:, :, 3:4].astype(np.uint16)
            arr = ((rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    else:  # L, 1, P, YCbCr, LAB, HSV, ...
        try:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as exc:
            raise UserError(f"{name}: cannot convert image mode {mode} to RGB ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{name}: decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _cmyk_to_rgb(im):
    """CMYK -> RGB through the embedded ICC profile when possible (what colour-managed viewers do)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # no littlecms, or a broken profile: fall back to the plain formula
            pass
    return im.convert("RGB")


def as_rgb_array(image, name: str = "image") -> np.ndarray:
    """A PIL image, numpy array or path as RGB ``uint8`` ``H x W x 3`` (the input of ``predict``).

    Arrays: ``H x W`` greyscale, ``H x W x 1``, ``H x W x 3`` RGB, ``H x W x 4`` RGBA
    (composited on black); ``uint8``, or ``uint16`` (scaled to 8 bit). Float arrays
    are refused: their range (0..1 or 0..255) is ambiguous.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        arr = image
    elif hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "convert"):
        return pil_to_rgb(image, name)
    else:
        try:
            import torch

            if isinstance(image, torch.Tensor):
                arr = image.detach().cpu().numpy()
            else:
                raise TypeError
        except TypeError:
            raise UserError(f"{name}: expected a path, a PIL image or an H x W x 3 uint8 array, "
                            f"got {type(image).__name__}") from None
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise UserError(f"{name}: expected a uint8 (or uint16) image array, got dtype {arr.dtype}; "
                        "for a float image in 0..1 pass (img * 255).round().astype('uint8')")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.uint16)
        arr = ((arr[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise UserError(f"{name}: expected an H x W x 3 image array (channels last), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{name}: empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_label_png(path: str | Path) -> np.ndarray:
    """A label image's raw class indices as ``H x W`` (palette PNGs keep indices, not colours)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise UserError(f"{path}: label is an RGB colour image; expected a single-channel "
                                "or palette image of class indices")
            arr = np.asarray(im) if im.mode in ("P", "L", "I", "I;16", "1") else np.asarray(im.convert("L"))
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: no such label file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable label image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 2:
        raise UserError(f"{path}: label has shape {arr.shape}; expected a single-channel H x W image")
    return np.array(arr)


# --------------------------------------------------------------------------- writing
def open_temp_beside(path: Path) -> tuple[int, Path]:
    """A new hidden temporary file next to ``path``: ``(fd, temp path)``.

    Unlike ``tempfile.mkstemp`` (mode 0600) the file gets the usual permissions
    (0666 minus the umask), so outputs are readable like any other file the user writes.
    """
    import secrets

    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file next to {path}")


def atomic_write(path: str | Path, save) -> Path:
    """Call ``save(binary file)`` on a temporary file in the same folder, then rename it onto
    ``path``: an interrupted or failed write never leaves a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path



def write_label_png(path: str | Path, label: np.ndarray, palette: np.ndarray | Sequence | None = None) -> Path:
    """Save a class-index map as a PNG whose pixel values are the class indices.

    Up to 256 classes: a palette ('P') PNG, index = class, colour = ``palette[class]``
    (so it is viewable and still holds the raw indices). More classes: 16-bit greyscale.
    """
    from PIL import Image

    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be H x W, got shape {label.shape}")
    path = Path(path)
    if label.size and (int(label.min()) < 0 or int(label.max()) > 65535):
        raise ValueError(f"label values must lie in 0..65535, got {label.min()}..{label.max()}")
    if label.size == 0 or int(label.max()) <= 255:
        lab8 = np.ascontiguousarray(label, dtype=np.uint8)
        im = Image.frombytes("P", (lab8.shape[1], lab8.shape[0]), lab8.tobytes())
        pal = np.zeros((256, 3), np.uint8)
        if palette is not None:
            p = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
            pal[: len(p)] = p
        im.putpalette(pal.reshape(-1).tolist())
    else:
        im = Image.fromarray(label.astype(np.uint16))
    return atomic_write(path, lambda fh: im.save(fh, format="PNG", optimize=False))


def write_rgb_png(path: str | Path, image, compress_level: int = 6) -> Path:
    """Save an RGB ``uint8`` array (or PIL image) as PNG, atomically."""
    from PIL import Image

    im = image if hasattr(image, "save") else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return atomic_write(Path(path), lambda fh: im.save(fh, format="PNG", compress_level=compress_level))


# --------------------------------------------------------------------------- input expansion
def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def collect_image_jobs(inputs: Iterable[str | Path]) -> list[tuple[Path, PurePath]]:
    """Expand inputs into ``(image path, output stem)`` pairs, in a stable order.

    * a file: taken as it is (whatever its extension); output stem = its stem;
    * a folder: every image file below it (recursively, by extension, hidden files
      skipped); output stem = its path relative to the folder, minus the extension,
      so the output keeps the folder structure;
    * a glob (``'photos/*.jpg'``, ``'**/*.png'``): the matching image files; output
      stem = the path relative to the glob's fixed leading folder.

    Duplicates are dropped. Two images that would get the same output stem (``a.jpg``
    and ``a.png``) keep their extension in the stem (``a_jpg``, ``a_png``).
    Raises UserError for a missing path, a glob that matches nothing, or a folder with no images.
    """
    jobs: list[tuple[Path, PurePath]] = []
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_file() or (p.is_symlink() and not p.exists()):
            # a dangling or looping link named directly fails when read, as one failed input
            jobs.append((p, PurePath(p.stem)))
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if _is_image_name(q) and q.is_file()
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise UserError(f"{p}: folder contains no image files "
                                f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            jobs += [(q, q.relative_to(p).with_suffix("")) for q in found]
        elif _has_glob(s):
            matches = sorted(_glob(os.path.expanduser(s)))
            found = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not found:
                raise UserError(f"{s}: pattern matches no image files")
            base = _glob_base(os.path.expanduser(s))
            for m in found:
                try:
                    rel = m.relative_to(base).with_suffix("")
                except ValueError:
                    rel = PurePath(m.stem)
                jobs.append((m, rel))
        elif p.exists():
            raise UserError(f"{p}: not a regular file or folder")
        else:
            raise UserError(f"{p}: no such file or folder")
    return _dedupe(jobs)


def _glob(pattern: str) -> list[Path]:
    """``glob.glob(pattern, recursive=True)`` without its flaw: ``**`` follows directory
    symlinks, so a link to an ancestor loops until the path is ~40 folders deep (and two such
    links make it exponential). Here ``**`` walks each real folder once (symlinked folders
    are followed, but never into a folder already visited); hidden names are skipped, as
    ``glob`` does."""
    if "**" not in pattern:
        return [Path(m) for m in globlib.glob(pattern, recursive=True)]
    parts = PurePath(pattern).parts
    n_fixed = 0
    while n_fixed < len(parts) - 1 and not _has_glob(parts[n_fixed]):
        n_fixed += 1
    base = Path(*parts[:n_fixed]) if n_fixed else Path(".")
    regex = re.compile(_glob_regex(parts[n_fixed:]))
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(base, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back into the walk: do not loop
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = PurePath(os.path.relpath(folder, base))
        for name in files + dirs:
            if not name.startswith(".") and regex.fullmatch((rel / name).as_posix()):
                out.append(Path(folder) / name)
    return out


def _glob_regex(parts: Sequence[str]) -> str:
    """A regex for a relative glob given as path parts: ``**`` = any folders (or none),
    ``*``/``?``/``[...]`` within one name."""
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += ".*" if last else "(?:[^/]+/)*"
            continue
        j = 0
        while j < len(part):
            c = part[j]
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            elif c == "[" and "]" in part[j + 2:]:
                end = part.index("]", j + 2)
                body = part[j + 1:end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
                j = end
            else:
                out += re.escape(c)
            j += 1
        out += "" if last else "/"
    return out


def _glob_base(pattern: str) -> Path:
    parts = PurePath(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _dedupe(jobs: list[tuple[Path, PurePath]]) -> list[tuple[Path, PurePath]]:
    seen: set[Path] = set()
    unique = []
    for path, stem in jobs:
        key = Path(os.path.realpath(path))  # resolve() raises on a symlink loop; that input fails later
        if key not in seen:
            seen.add(key)
            unique.append((path, stem))
    counts: dict[PurePath, int] = {}
    for _, stem in unique:
        counts[stem] = counts.get(stem, 0) + 1
    out: list[tuple[Path, PurePath]] = []
    taken: set[PurePath] = set()
    for path, stem in unique:
        if counts[stem] > 1:
            stem = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower() or 'noext'}")
        base, n = stem, 2
        while stem in taken:
            stem = base.with_name(f"{base.name}-{n}")
            n += 1
        taken.add(stem)
        out.append((path, stem))
    return out


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named by ``inputs`` (files, folders searched recursively, globs); see
    :func:`collect_image_jobs`."""
    return [path for path, _ in collect_image_jobs(inputs)]
