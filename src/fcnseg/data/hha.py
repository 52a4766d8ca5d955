"""Depth -> HHA (Gupta, Girshick, Arbelaez, Malik, ECCV 2014), as the NYUD HHA nets expect.

A port of the reference MATLAB code (``rcnn-depth/rcnn/saveHHA.m`` and
``mcg/depth_features/processDepthImage.m``, ``rgbdutils`` ``computeNormalsSquareSupport``,
``getYDir``, ``getRMatrix``), checked against that code run in GNU Octave
(``tests/goldens/hha``, made by ``scripts/hha_goldens.sh``). Three uint8 channels, in the
order of the reference HHA PNGs:

1. horizontal disparity: ``31000 / max(z, 100)``, z the depth in cm;
2. height above the lowest point in cm, along the estimated gravity direction (if the
   lowest point is less than 90 cm below the camera, the floor is taken at 130 cm below);
3. angle between the local surface normal and gravity, in degrees, + 38 (a floor is
   38, a wall 128, a ceiling 218).

As in the reference:

- normals are least-squares planes ``n . (X/Z, Y/Z, 1) = 1/Z`` over a square window of
  the pixels with (raw) depth: 7 x 7 for the angle channel, 21 x 21 for gravity;
- gravity is estimated from the 21 x 21 normals by ``getYDir``: starting from the
  camera's vertical, repeatedly take the normals nearly parallel to it (floors, table
  tops) and nearly perpendicular (walls) and choose the direction most parallel to the
  first and most perpendicular to the second (smallest eigenvector of
  ``sum_perp n n^T - sum_par n n^T``), thresholds 45 then 15 degrees, 5 iterations each;
- the point cloud is rotated by ``getRMatrix`` (no rotation when gravity is within 0.1
  degree of the camera's vertical), and values are rounded like MATLAB's ``uint8``
  (half away from zero, saturating); a pixel whose window has too few points for a
  plane gets the angle 180 degrees (218), as the reference's ``min(1, max(-1, NaN))`` does.

The reference is given a *filled* depth map (every pixel has a value; NYUD's
``depths``) for the values and the *raw* depth (``rawDepths``) whose zeros are left out
of the normal fits, so every pixel gets an HHA value: pass ``raw_depth`` for that.
Deliberate differences: a pixel without depth in ``depth`` itself (0 or NaN) gets 0 in
all three channels (the reference would compute values from depth 0), the floor height
is the lowest such valid point, and gravity stays at its last estimate when no normal
falls in either set (the reference's eigenvector is then arbitrary).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: NYUDv2 colour camera intrinsics (fx, fy, cx, cy) for the full 640 x 480 frame, with a
#: 0-based principal point: the NYU toolbox's MATLAB (1-based) cx, cy minus 1.
NYUD_INTRINSICS = (518.857901, 519.469611, 324.582449, 252.736166)

__all__ = ["NYUD_INTRINSICS", "backproject", "depth_to_hha", "estimate_gravity", "estimate_normals"]


def backproject(depth: np.ndarray, intrinsics: Sequence[float] = NYUD_INTRINSICS) -> np.ndarray:
    """Depth (H x W) -> camera-frame points H x W x 3 (x right, y down, z forward), in
    the depth's unit; pixel (row v, column u) is at 0-based (u, v)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    h, w = depth.shape
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    z = depth.astype(np.float64)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum of ``a`` (H x W x C) over the (2r+1)^2 window around each pixel, zeros outside
    (MATLAB's ``filter2(ones(2r+1), a)``). Summed directly (rows, then columns), not by
    integral images, so a window of zeros sums to exactly 0 as in MATLAB: the plane fit
    of a window with one or two points is then exactly singular there too."""
    h, w = a.shape[:2]
    padded = np.pad(a.astype(np.float64), ((r, r), (r, r)) + ((0, 0),) * (a.ndim - 2))
    rows = padded[0:h].copy()
    for i in range(1, 2 * r + 1):
        rows += padded[i:i + h]
    out = rows[:, 0:w].copy()
    for i in range(1, 2 * r + 1):
        out += rows[:, i:i + w]
    return out


def estimate_normals(points: np.ndarray, valid: np.ndarray, window: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (H x W x 3, facing the camera) fitted over a ``window`` x ``window``
    neighbourhood, as the reference ``computeNormalsSquareSupport``.

    Only points where ``valid`` enter the fits, but every pixel whose window holds enough
    of them gets a normal. Returns ``(normals, ok)``; ``ok`` marks pixels with a normal
    (elsewhere the normal is 0).
    """
    r = window // 2
    x, y, z = (points[..., i] for i in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        xz = np.where(valid, x / z, 0.0)
        yz = np.where(valid, y / z, 0.0)
        iz = np.where(valid, 1.0 / z, 0.0)
    one = valid.astype(np.float64)
    s = _box_sum(np.stack([xz * xz, xz * yz, xz, yz * yz, yz, one, xz * iz, yz * iz, iz], -1), r)
    a1, a2, a3, a4, a5, a6, b1, b2, b3 = (s[..., i] for i in range(9))
    # the adjugate of the symmetric A^T A, as the reference's invertIt (no division by the determinant)
    adj_a, adj_d, adj_g = a4 * a6 - a5 * a5, -(a2 * a6 - a3 * a5), a2 * a5 - a3 * a4
    adj_e, adj_h, adj_k = a1 * a6 - a3 * a3, -(a1 * a5 - a2 * a3), a1 * a4 - a2 * a2
    n = np.stack([adj_a * b1 + adj_d * b2 + adj_g * b3,
                  adj_d * b1 + adj_e * b2 + adj_h * b3,
                  adj_g * b1 + adj_h * b2 + adj_k * b3], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = n / np.linalg.norm(n, axis=-1, keepdims=True)
        # the reference's orientation: z >= 0, then pointing away from the camera (n . p > 0)
        sz = np.sign(n[..., 2:3])
        n = n * np.where(sz == 0, 1.0, sz)
        sp = np.sign(np.einsum("hwc,hwc->hw", n, points))[..., None]
        n = n * np.where(np.isnan(sp) | (sp == 0), 1.0, sp)
    ok = np.isfinite(n).all(axis=-1)
    return np.where(ok[..., None], -n, 0.0), ok  # facing the camera


def estimate_gravity(normals: np.ndarray, init_up: Sequence[float] = (0.0, -1.0, 0.0),
                     thresholds: Sequence[float] = (45.0, 15.0), iterations: int = 5) -> np.ndarray:
    """Up direction (unit, camera frame) from N x 3 unit normals, per the reference getYDir."""
    up = np.asarray(init_up, dtype=np.float64)
    up /= np.linalg.norm(up)
    for thr in thresholds:
        for _ in range(iterations):
            sim = normals @ up
            par = normals[np.abs(sim) > np.cos(np.deg2rad(thr))]
            perp = normals[np.abs(sim) < np.sin(np.deg2rad(thr))]
            if len(par) + len(perp) == 0:
                return up
            a = perp.T @ perp - par.T @ par
            _, vecs = np.linalg.eigh(a)
            new = vecs[:, 0]
            up = new * (1.0 if new @ up >= 0 else -1.0)
    return up


def _rotation(yi: np.ndarray, yf: np.ndarray) -> np.ndarray:
    """The reference getRMatrix(yi, yf): rotation taking yi to yf; identity within 0.1 degree."""
    yi, yf = yi / np.linalg.norm(yi), yf / np.linalg.norm(yf)
    phi = np.degrees(np.arccos(np.clip(yi @ yf, -1.0, 1.0)))
    if abs(phi) <= 0.1:
        return np.eye(3)
    ax = np.cross(yi, yf)
    ax /= np.linalg.norm(ax)
    s_hat = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    phi = np.deg2rad(phi)
    return np.eye(3) + np.sin(phi) * s_hat + (1 - np.cos(phi)) * (s_hat @ s_hat)


def _uint8(a: np.ndarray) -> np.ndarray:
    """MATLAB's uint8(): round half away from zero, saturate to 0..255, NaN -> 0."""
    a = np.where(np.isnan(a), 0.0, a)
    return np.clip(np.sign(a) * np.floor(np.abs(a) + 0.5), 0, 255).astype(np.uint8)


def depth_to_hha(depth: np.ndarray, intrinsics: Sequence[float] = NYUD_INTRINSICS, *,
                 raw_depth: np.ndarray | None = None, up: Sequence[float] | None = None,
                 return_up: bool = False, normal_window: int = 7, gravity_window: int = 21
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """HHA encoding (H x W x 3 uint8) of a depth map in metres (0/NaN = missing).

    ``raw_depth`` (same shape and unit): the sensor's depth before hole filling; its
    missing pixels are left out of the normal fits while ``depth`` (filled) gives the
    values, as the reference ``saveHHA(D, RD)`` does. ``up`` fixes the gravity direction
    (camera frame, y down, so level is ``(0, -1, 0)``) instead of estimating it;
    ``return_up`` also returns the direction used.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be H x W, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    fit = valid
    if raw_depth is not None:
        raw = np.asarray(raw_depth, dtype=np.float64)
        if raw.shape != depth.shape:
            raise ValueError(f"raw_depth has shape {raw.shape}, depth {depth.shape}")
        fit = valid & np.isfinite(raw) & (raw > 0)
    z_cm = np.where(valid, depth, 0.0) * 100.0  # the reference works in centimetres
    pts = backproject(z_cm, intrinsics)
    normals, ok = estimate_normals(pts, fit, normal_window)
    if up is None:
        coarse, coarse_ok = estimate_normals(pts, fit, gravity_window)
        g = estimate_gravity(coarse[coarse_ok])
    else:
        g = np.asarray(up, dtype=np.float64)
        g = g / np.linalg.norm(g)
    rot = _rotation(np.array([0.0, 1.0, 0.0]), -g)  # the reference's y0 = [0 1 0] and yDir = -up
    height = -(pts @ rot)[..., 1]  # -(R' p)_y
    lowest = height[valid].min() if valid.any() else 0.0
    if lowest > -90:
        lowest = -130.0
    disparity = 31000.0 / np.maximum(z_cm, 100.0)
    # no normal (no fit in the window): MATLAB's min(1, max(-1, NaN)) is -1, so 180 degrees
    angle = np.degrees(np.arccos(np.where(ok, np.clip(normals @ g, -1.0, 1.0), -1.0))) + 38.0
    hha = _uint8(np.stack([disparity, height - lowest, angle], axis=-1))
    hha[~valid] = 0
    return (hha, g) if return_up else hha
