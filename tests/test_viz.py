"""fcnseg.viz: palettes, colour maps, overlays, legends and side-by-side figures (PIL only)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fcnseg.viz import (
    camvid_palette,
    colorize,
    default_palette,
    distinct_palette,
    grid,
    legend,
    overlay,
    side_by_side,
    voc_palette,
)


def test_voc_palette_matches_the_devkit():
    pal = voc_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # values of VOClabelcolormap.m: background, aeroplane, bicycle, bird, person (15), void (255)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal}) == 256
    np.testing.assert_array_equal(voc_palette(21), pal[:21])


def test_camvid_palette():
    from fcnseg.data.camvid import PALETTE

    pal = camvid_palette()
    assert pal.shape == (11, 3)
    np.testing.assert_array_equal(pal, PALETTE)
    assert pal[3].tolist() == [128, 64, 128]  # road, SegNet colours


@pytest.mark.parametrize("n", [1, 2, 11, 21, 150, 256, 1000])
def test_distinct_palette_any_count(n):
    pal = distinct_palette(n)
    assert pal.shape == (n, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == n
    if n >= 2:  # neighbouring classes are far apart in colour
        d = np.abs(pal[1:].astype(int) - pal[:-1].astype(int)).sum(1)
        assert d.min() > 30


def test_default_palette():
    from fcnseg.data.camvid import CLASS_NAMES

    np.testing.assert_array_equal(default_palette(11, CLASS_NAMES), camvid_palette())
    np.testing.assert_array_equal(default_palette(21), voc_palette(21))


def test_colorize_and_ignored_values():
    pal = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    lab = np.array([[0, 1], [255, 2]], np.uint8)
    out = colorize(lab, pal)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [40, 50, 60]
    assert out[1, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [0, 0, 0]
    wide = colorize(np.array([[0, -1], [300, 1]], np.int64), pal, ignore_color=(9, 9, 9))
    assert wide[0, 0].tolist() == [10, 20, 30] and wide[1, 1].tolist() == [40, 50, 60]
    assert wide[0, 1].tolist() == [9, 9, 9] and wide[1, 0].tolist() == [9, 9, 9]


def test_overlay_alpha():
    img = np.full((3, 4, 3), 100, np.uint8)
    lab = np.zeros((3, 4), np.uint8)
    lab[0, 0] = 255  # ignore: bare image
    pal = np.array([[200, 0, 50]], np.uint8)
    np.testing.assert_array_equal(overlay(img, lab, pal, 0.0), img)
    full = overlay(img, lab, pal, 1.0)
    assert full[1, 1].tolist() == [200, 0, 50] and full[0, 0].tolist() == [100, 100, 100]
    half = overlay(img, lab, pal, 0.5)
    assert half[1, 1].tolist() == [150, 50, 75]
    with pytest.raises(ValueError):
        overlay(img, lab, pal, 1.5)
    with pytest.raises(ValueError):
        overlay(img, lab[:2], pal)


def test_legend_layout():
    names = [f"class {i}" for i in range(12)]
    leg = legend(names, voc_palette(12), width=300)
    wide = legend(names, voc_palette(12), width=1200)
    assert leg.mode == "RGB" and leg.width == 300
    assert leg.height > wide.height  # narrower: more rows
    arr = np.asarray(legend(["a", "b"], [[255, 0, 0], [0, 0, 255]]))
    assert (np.all(arr == (255, 0, 0), axis=2)).sum() > 50  # the swatches are drawn
    assert (np.all(arr == (0, 0, 255), axis=2)).sum() > 50


def test_side_by_side_panels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    pred = np.zeros((60, 80), np.uint8)
    pred[:, 40:] = 2
    gt = np.ones((60, 80), np.uint8)
    gt[0, 0] = 255
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    fig = side_by_side(img, pred, gt, class_names=["r", "g", "b"], palette=pal)
    assert fig.width >= 3 * 80 and fig.height > 60
    arr = np.asarray(fig)
    for colour in pal:  # every class colour shows up (prediction: r and b; truth: g)
        assert np.all(arr == colour, axis=2).sum() >= 60 * 40 - 100
    two = side_by_side(img, pred, class_names=["r", "g", "b"], palette=pal)
    assert two.width < fig.width
    ov = np.asarray(side_by_side(img, pred, gt, class_names=["r", "g", "b"], palette=pal, alpha=0.5))
    assert ov.shape == arr.shape
    with pytest.raises(ValueError):
        side_by_side(img, pred[:30], gt)
    assert side_by_side(img, pred).width > 0  # names and palette are optional


def test_grid():
    from PIL import Image

    ims = [Image.new("RGB", (10, 5)), Image.new("RGB", (10, 8)), np.zeros((4, 4, 3), np.uint8)]
    g = grid(ims, columns=2, gap=2)
    assert g.size == (22, 8 + 2 + 4)


def test_viz_works_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import numpy as np\n"
            "from fcnseg.viz import side_by_side\n"
            "fig = side_by_side(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), "
            "np.zeros((8, 8), np.uint8), ['a'], [[1, 2, 3]])\n"
            "assert fig.width > 24\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
