"""Users' own data: ``images/`` + ``masks/`` + a classes file.

Layout::

    ROOT/classes.yaml (or .yml / .json, or pass classes=PATH)
    ROOT/images/NAME.jpg|png|...      ROOT/masks/NAME.png        (split "all")
    ROOT/images/SPLIT/NAME.jpg         ROOT/masks/SPLIT/NAME.png  (per-split subfolders)
    ROOT/SPLIT.txt                     (optional list of NAMEs or image paths, one a line)

The classes file::

    names: [background, road, car]          # K classes, in output order (required)
    colors: [[0,0,0], [128,64,128], [64,0,128]]  # optional; needed for RGB masks
    ignore_index: 255      # the mask value meaning "not labelled" (default 255)
    ignore_color: [255, 255, 255]           # RGB masks: the colour meaning "not labelled"
    mask_format: auto      # index | rgb | auto (by the PNG mode: L/P/I -> index, RGB -> colour)
    reduce_zero_label: false                # true: mask 0 = unlabelled, 1..K = classes

Equivalently ``classes: [{name: road, color: [128,64,128]}, ...]``. Index masks (8/16-bit
or palette PNG: the palette index is the class) hold class numbers; RGB masks are mapped
through the colour table, and a colour not in it is an error naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UserError
from ..palettes import voc_palette
from .base import IGNORE_INDEX, SegmentationDataset, Transform, as_palette, check_root, read_image, read_list

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


class ClassTable:
    """What a classes file says: names, colours, the ignore value/colour, the mask format."""

    def __init__(self, names: list[str], colors: np.ndarray | None, ignore_index: int = IGNORE_INDEX,
                 ignore_color: tuple[int, int, int] | None = None, mask_format: str = "auto",
                 reduce_zero_label: bool = False, source: str = "?") -> None:
        self.names, self.colors, self.ignore_index = names, colors, ignore_index
        self.ignore_color, self.mask_format, self.reduce_zero_label = ignore_color, mask_format, reduce_zero_label
        self.source = source

    @classmethod
    def load(cls, path: Path) -> "ClassTable":
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path}: classes file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: unreadable classes file ({exc})") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # yaml/json syntax errors
            raise UserError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "classes") -> "ClassTable":
        if isinstance(data, list):
            data = {"classes": data}
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping with 'names' (and optional 'colors')")
        names, colors = data.get("names"), data.get("colors")
        if "classes" in data:
            entries = data["classes"]
            if not isinstance(entries, list) or not all(isinstance(e, (dict, str)) for e in entries):
                raise UserError(f"{source}: 'classes' must be a list of names or {{name, color}} entries")
            names = [e if isinstance(e, str) else e.get("name") for e in entries]
            cols = [None if isinstance(e, str) else e.get("color") for e in entries]
            colors = cols if all(c is not None for c in cols) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise UserError(f"{source}: 'names' must be a non-empty list of class names")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UserError(f"{source}: class name {dup!r} appears twice")
        if len(names) > 255:
            raise UserError(f"{source}: {len(names)} classes; at most 255 are supported (255 = ignore)")
        pal = None
        if colors is not None:
            try:
                pal = as_palette(colors)
            except (ValueError, TypeError):
                raise UserError(f"{source}: 'colors' must be a list of [R, G, B] values in 0..255") from None
            if len(pal) != len(names):
                raise UserError(f"{source}: {len(pal)} colors for {len(names)} names")
            if len({tuple(c) for c in pal.tolist()}) != len(pal):
                raise UserError(f"{source}: two classes share a colour")
        ignore = data.get("ignore_index", IGNORE_INDEX)
        if not isinstance(ignore, int) or ignore < 0:
            raise UserError(f"{source}: ignore_index must be a non-negative integer, got {ignore!r}")
        reduce_zero = bool(data.get("reduce_zero_label", False))
        if ignore < len(names) and not reduce_zero:
            raise UserError(f"{source}: ignore_index {ignore} is also a class index (0..{len(names) - 1}); "
                            "use a value >= the class count, or reduce_zero_label: true for 0 = unlabelled")
        ic = data.get("ignore_color")
        if ic is not None:
            try:
                ic = tuple(as_palette([ic])[0].tolist())
            except (ValueError, TypeError):
                raise UserError(f"{source}: ignore_color must be [R, G, B] in 0..255") from None
        fmt = data.get("mask_format", "auto")
        if fmt not in ("auto", "index", "rgb"):
            raise UserError(f"{source}: mask_format must be auto, index or rgb, got {fmt!r}")
        if fmt == "rgb" and pal is None:
            raise UserError(f"{source}: mask_format rgb needs 'colors' for every class")
        return cls(list(names), pal, ignore, ic, fmt, reduce_zero, source)

    def rgb_lut(self) -> dict[int, int]:
        """Packed 24-bit colour -> class (or 255 for the ignore colour)."""
        lut = {}
        if self.colors is not None:
            for k, (r, g, b) in enumerate(self.colors.tolist()):
                lut[(r << 16) | (g << 8) | b] = k
        if self.ignore_color is not None:
            r, g, b = self.ignore_color
            lut[(r << 16) | (g << 8) | b] = IGNORE_INDEX
        return lut


def read_mask(path: Path, table: ClassTable) -> np.ndarray:
    """A mask file as class indices 0..K-1 with 255 for unlabelled."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            fmt = table.mask_format
            if fmt == "auto":
                fmt = "rgb" if mode in ("RGB", "RGBA") else "index"
            if fmt == "rgb":
                arr = np.asarray(im.convert("RGB"))
            else:
                if mode in ("RGB", "RGBA"):
                    raise UserError(f"{path}: RGB mask but mask_format is index in {table.source}")
                arr = np.asarray(im if mode in ("P", "L", "I", "I;16", "1") else im.convert("L"))
    except FileNotFoundError:
        raise UserError(f"{path}: mask file not found") from None
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable mask ({exc.__class__.__name__}: {exc})") from None
    if fmt == "rgb":
        if table.colors is None:
            raise UserError(f"{path}: RGB mask, but {table.source} gives no 'colors' to map it")
        packed = (arr[..., 0].astype(np.int32) << 16) | (arr[..., 1].astype(np.int32) << 8) | arr[..., 2]
        uniq, inv = np.unique(packed, return_inverse=True)
        lut = table.rgb_lut()
        missing = [int(u) for u in uniq if int(u) not in lut]
        if missing:
            u = missing[0]
            raise UserError(f"{path}: mask colour ({u >> 16}, {(u >> 8) & 255}, {u & 255}) is not in the colour "
                            f"table of {table.source}")
        return np.array([lut[int(u)] for u in uniq], np.uint8)[inv.reshape(packed.shape)]
    lab = arr.astype(np.int64)
    out = lab.copy()
    if table.reduce_zero_label:
        out = lab - 1
        out[lab == 0] = IGNORE_INDEX
    out[lab == table.ignore_index] = IGNORE_INDEX
    return out.astype(np.uint8) if out.max(initial=0) <= 255 and out.min(initial=0) >= 0 else out


class FolderDataset(SegmentationDataset):
    """``images/`` + ``masks/`` with a YAML/JSON classes file (see the module doc)."""

    name = "folder"

    def __init__(self, root: str | Path, split: str = "all", transform: Transform | None = None,
                 skip_bad: bool = False, classes: str | Path | dict | None = None,
                 masks_dir: str = "masks", images_dir: str = "images") -> None:
        root = check_root(root, "dataset")
        super().__init__(root, split, transform, skip_bad)
        if isinstance(classes, dict):
            self.table = ClassTable.from_dict(classes, "classes")
        else:
            path = Path(classes) if classes is not None else next(
                (root / n for n in CLASS_FILES if (root / n).is_file()), None)
            if path is None:
                raise UserError(f"{root}: no classes file (expected {' or '.join(CLASS_FILES)}, or pass classes=)")
            self.table = ClassTable.load(path)
        self.class_names = list(self.table.names)
        self.void_value = self.table.ignore_index
        self.palette = self.table.colors if self.table.colors is not None else voc_palette(self.num_classes)
        img_dir, mask_dir = root / images_dir, root / masks_dir
        if not img_dir.is_dir():
            raise UserError(f"{img_dir}: images folder not found")
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            images = [self._resolve_listed(img_dir, item, list_file) for item in read_list(list_file)]
            rel = [p.relative_to(img_dir) if p.is_relative_to(img_dir) else Path(p.name) for p in images]
        elif (img_dir / split).is_dir():
            images = self._scan(img_dir / split)
            rel = [p.relative_to(img_dir) for p in images]
        elif split == "all":
            images = self._scan(img_dir)
            rel = [p.relative_to(img_dir) for p in images]
        else:
            raise UserError(f"{root}: no split {split!r} (expected {list_file.name}, {img_dir / split}/, "
                            "or split 'all' for every image)")
        if not images:
            raise UserError(f"{img_dir}: no images for split {split!r} (extensions: {', '.join(IMAGE_EXTS)})")
        self.files = [{"image": img, "label": self._mask_for(mask_dir, r)} for img, r in zip(images, rel)]

    @staticmethod
    def _scan(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())

    @staticmethod
    def _resolve_listed(img_dir: Path, item: str, list_file: Path) -> Path:
        p = Path(item)
        for cand in (p if p.is_absolute() else img_dir / p, list_file.parent / p):
            if cand.suffix.lower() in IMAGE_EXTS and cand.exists():
                return cand
        for ext in IMAGE_EXTS:  # a bare name
            cand = img_dir / f"{item}{ext}"
            if cand.exists():
                return cand
        return img_dir / p  # reported as missing when read

    @staticmethod
    def _mask_for(mask_dir: Path, rel: Path) -> Path:
        """The mask of image ``rel``: same relative path and stem, ``.png`` preferred."""
        stem = str(mask_dir / rel.parent / rel.stem)
        for ext in (".png", ".tif", ".tiff", ".bmp"):
            if Path(stem + ext).exists():
                return Path(stem + ext)
        return Path(stem + ".png")

    def _read(self, i: int) -> dict:
        f = self.files[i]
        return {"image": read_image(f["image"]), "label": read_mask(f["label"], self.table)}
