"""Pictures of segmentations: palettes, colourised label maps, overlays, legends, panels.

Everything here is numpy + Pillow, so figures can be written on a server with no
matplotlib and no display. Images are RGB ``uint8`` ``H x W x 3`` arrays; label maps
are ``H x W`` integer class indices; palettes are ``K x 3`` ``uint8`` arrays.
Label values outside the palette (the ignore index 255, CamVid's void 11 when the
palette has 11 colours) are drawn as "no class": black in colour maps, the bare
image in overlays.
"""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np

from .palettes import voc_palette

__all__ = [
    "voc_palette", "camvid_palette", "distinct_palette", "default_palette", "colorize", "overlay",
    "legend", "side_by_side", "grid", "get_font",
]

IGNORE_COLOR = (0, 0, 0)

# voc_palette lives in fcnseg.palettes (the data sets need it, and viz needs the data sets' colours)


# --------------------------------------------------------------------------- palettes
def camvid_palette() -> np.ndarray:
    """The 11 CamVid class colours of the SegNet tutorial (Sky, Building, ..., Bicyclist)."""
    from .data.camvid import PALETTE

    return np.array(PALETTE, dtype=np.uint8)


def camvid_class_names() -> list[str]:
    from .data.camvid import CLASS_NAMES

    return list(CLASS_NAMES)


def distinct_palette(n: int, seed_hue: float = 0.0) -> np.ndarray:
    """``n`` visually distinct colours for any class count.

    Hues step by the golden angle (neighbouring classes get far-apart hues) and three
    saturation/brightness levels alternate; colours are unique as ``uint8`` triples
    (a clash, possible only for thousands of classes, is nudged to a free colour).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = [(0.75, 0.95), (0.55, 0.75), (0.9, 0.6)]
    golden = 0.618033988749895
    out = np.zeros((n, 3), dtype=np.uint8)
    used: set[tuple[int, int, int]] = set()
    for i in range(n):
        s, v = levels[(i // 7) % len(levels)]
        h = (seed_hue + i * golden) % 1.0
        rgb = tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h, s, v))
        k = 0
        while rgb in used:  # deterministic walk to the next free colour
            k += 1
            rgb = ((rgb[0] + 7 * k) % 256, (rgb[1] + 13 * k) % 256, (rgb[2] + 29 * k) % 256)
        used.add(rgb)
        out[i] = rgb
    return out


def default_palette(num_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """The palette to use when a model or data set does not bring its own.

    CamVid's colours for the CamVid class list, otherwise the VOC colour map (the
    FCN papers' convention; distinct for any class count).
    """
    if class_names is not None and list(class_names) == camvid_class_names():
        return camvid_palette()
    return voc_palette(num_classes)


# --------------------------------------------------------------------------- label maps -> pictures
def _palette_array(palette: np.ndarray | Sequence) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"palette must be K x 3, got shape {pal.shape}")
    return pal


def _lut(pal: np.ndarray, size: int, ignore_color: Sequence[int]) -> np.ndarray:
    lut = np.empty((size, 3), np.uint8)
    lut[:] = ignore_color
    lut[: min(len(pal), size)] = pal[:size]
    return lut


def colorize(label: np.ndarray, palette: np.ndarray | Sequence,
             ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
    """Class-index map ``H x W`` -> RGB ``H x W x 3``; indices outside the palette get ``ignore_color``."""
    pal = _palette_array(palette)
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be H x W, got shape {label.shape}")
    if label.dtype == np.uint8:  # index a 256-entry table directly: no wide copy of a huge map
        return _lut(pal, 256, ignore_color)[label]
    lut = _lut(pal, len(pal) + 1, ignore_color)
    idx = np.where((label < 0) | (label >= len(pal)), len(pal), label).astype(np.intp, copy=False)
    return lut[idx]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray | Sequence, alpha: float = 0.5) -> np.ndarray:
    """The image with the class colours blended in: ``(1 - alpha) * image + alpha * colour``.

    Pixels whose label is outside the palette (ignore / void) show the bare image.
    Works in bands of rows so that a huge image needs little extra memory.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = np.asarray(image)
    label = np.asarray(label)
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    pal = _palette_array(palette)
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    band = max(1, (1 << 20) // max(1, label.shape[1]))
    for y in range(0, label.shape[0], band):
        lab = label[y:y + band]
        img = image[y:y + band].astype(np.float32)
        blend = img * (1.0 - alpha) + colorize(lab, pal).astype(np.float32) * alpha
        invalid = (lab < 0) | (lab >= len(pal))
        if invalid.any():
            blend[invalid] = img[invalid]
        np.clip(np.round(blend), 0, 255, out=blend)
        out[y:y + band] = blend
    return out


# --------------------------------------------------------------------------- text and layout
def get_font(size: int = 14):
    """A TrueType font at ``size`` (Pillow's bundled one), or Pillow's bitmap font on old Pillows."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def legend(class_names: Sequence[str], palette: np.ndarray | Sequence, indices: Sequence[int] | None = None,
           width: int | None = None, font_size: int = 14, background: Sequence[int] = (255, 255, 255)):
    """A PIL image with one colour swatch and name per class, laid out in columns.

    ``indices`` picks which classes to show (default: all); ``width`` wraps the entries
    into as many columns as fit (default: one row per 4 classes' worth of width).
    """
    from PIL import Image, ImageDraw

    pal = _palette_array(palette)
    names = list(class_names)
    idx = list(range(len(names))) if indices is None else [int(i) for i in indices]
    font = get_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw = font_size + 4
    pad = 6
    entries = []
    for i in idx:
        name = names[i] if 0 <= i < len(names) else f"class {i}"
        color = tuple(int(c) for c in pal[i]) if 0 <= i < len(pal) else IGNORE_COLOR
        entries.append((f"{i} {name}", color))
    if not entries:
        return Image.new("RGB", (max(width or 1, 1), 1), tuple(background))
    cell_w = max(_text_size(probe, t, font)[0] for t, _ in entries) + sw + 3 * pad
    cell_h = sw + pad
    if width is None:
        width = cell_w * min(len(entries), 4) + pad
    cols = max(1, (width - pad) // cell_w)
    rows = -(-len(entries) // cols)
    img = Image.new("RGB", (max(width, cell_w + pad), rows * cell_h + pad), tuple(background))
    draw = ImageDraw.Draw(img)
    for k, (text, color) in enumerate(entries):
        r, c = divmod(k, cols)
        x, y = pad + c * cell_w, pad + r * cell_h
        draw.rectangle([x, y, x + sw - 1, y + sw - 1], fill=color, outline=(64, 64, 64))
        draw.text((x + sw + pad, y + sw // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return img


def _titled(panel: np.ndarray, title: str, font, background=(255, 255, 255)):
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.asarray(panel, dtype=np.uint8))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    th = _text_size(probe, "Ag", font)[1] + 10
    out = Image.new("RGB", (im.width, im.height + th), background)
    out.paste(im, (0, th))
    ImageDraw.Draw(out).text((im.width // 2, th // 2), title, fill=(0, 0, 0), font=font, anchor="mm")
    return out


def side_by_side(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, palette: np.ndarray | Sequence | None = None,
                 titles: Sequence[str] | None = None, alpha: float | None = None,
                 legend_classes: str = "present", font_size: int = 16, gap: int = 8):
    """A figure (PIL image): input | prediction | ground truth (if given), titled, with a legend.

    ``alpha``: draw prediction and truth as overlays on the image with that opacity
    instead of flat colour maps. ``legend_classes``: ``"present"`` (classes seen in the
    prediction or truth) or ``"all"``.
    """
    from PIL import Image

    pred = np.asarray(pred)
    n = int(pred.max()) + 1 if pred.size else 1
    if class_names is None:
        class_names = [f"class {i}" for i in range(n)]
    if palette is None:
        palette = default_palette(len(class_names), class_names)
    pal = _palette_array(palette)
    panels = [np.asarray(image, dtype=np.uint8)]
    maps = [pred] + ([np.asarray(gt)] if gt is not None else [])
    for m in maps:
        if m.shape != pred.shape or m.shape != panels[0].shape[:2]:
            raise ValueError(f"image {panels[0].shape[:2]}, prediction {pred.shape} and truth "
                             f"{None if gt is None else np.asarray(gt).shape} must have the same size")
        panels.append(overlay(panels[0], m, pal, alpha) if alpha is not None else colorize(m, pal))
    if titles is None:
        titles = ["image", "prediction", "ground truth"][: len(panels)]
    font = get_font(font_size)
    tiles = [_titled(p, t, font) for p, t in zip(panels, titles)]
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1)
    if legend_classes == "all":
        shown = list(range(len(class_names)))
    elif legend_classes == "present":
        present = set()
        for m in maps:
            vals = np.unique(m)
            present.update(int(v) for v in vals if 0 <= v < len(class_names))
        shown = sorted(present)
    else:
        raise ValueError(f"legend_classes must be 'present' or 'all', got {legend_classes!r}")
    leg = legend(class_names, pal, shown, width=width - 2 * gap, font_size=max(font_size - 2, 8))
    height = max(t.height for t in tiles) + leg.height + 3 * gap
    fig = Image.new("RGB", (width, height), (255, 255, 255))
    x = gap
    for t in tiles:
        fig.paste(t, (x, gap))
        x += t.width + gap
    fig.paste(leg, (gap, gap * 2 + max(t.height for t in tiles)))
    return fig


def grid(images: Sequence, columns: int = 1, gap: int = 8, background: Sequence[int] = (255, 255, 255)):
    """Paste PIL images (or RGB arrays) into a grid, row by row, left-aligned."""
    from PIL import Image

    ims = [im if hasattr(im, "paste") else Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]
    if not ims:
        raise ValueError("grid needs at least one image")
    rows = [ims[i:i + columns] for i in range(0, len(ims), columns)]
    widths = [sum(im.width for im in r) + gap * (len(r) - 1) for r in rows]
    heights = [max(im.height for im in r) for r in rows]
    out = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1)), tuple(background))
    y = 0
    for r, h in zip(rows, heights):
        x = 0
        for im in r:
            out.paste(im, (x, y))
            x += im.width + gap
        y += h + gap
    return out


def save_figure(fig, path, dpi: int = 150) -> None:
    """Write a matplotlib figure and close it; a path that cannot be written is one line
    naming it (a :class:`~fcnseg.errors.UserError`), not a traceback."""
    import matplotlib.pyplot as plt

    from .errors import UserError

    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
