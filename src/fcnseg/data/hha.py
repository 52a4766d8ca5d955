"""Depth -> HHA (Gupta, Girshick, Arbelaez, Malik, ECCV 2014), as the NYUD HHA nets expect.

Three uint8 channels, in the order of the reference HHA PNGs:

1. horizontal disparity: ``310 / max(z, 1 m)`` (Gupta: 31000 / depth in cm, floored at 100 cm),
2. height above ground in cm: heights along the estimated gravity direction relative to the
   lowest point of the scene (if that point is less than 0.9 m below the camera, the floor
   is assumed at 1.3 m below it, as in Gupta's code),
3. angle between the local surface normal and gravity ("up"), in degrees, + 38
   (so a floor is 38, a wall 128, a ceiling 218).

Gravity is estimated from the normals as in Gupta's ``getYDir``: starting from the camera's
up axis, repeatedly pick the normals nearly parallel to it (floors, table tops) and nearly
perpendicular (walls), and take the direction most parallel to the first set and most
perpendicular to the second (the smallest eigenvector of ``sum_perp n n^T - sum_par n n^T``),
with angle thresholds 45 then 15 degrees. Values saturate to 0..255 like MATLAB's uint8;
missing depth (0 or NaN) gives 0 in all channels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: NYUDv2 colour camera intrinsics (fx, fy, cx, cy) for the full 640 x 480 frame (NYU toolbox)
NYUD_INTRINSICS = (518.857901, 519.469611, 325.582449, 253.736166)

__all__ = ["depth_to_hha", "backproject", "estimate_normals", "estimate_gravity", "NYUD_INTRINSICS"]


def backproject(depth: np.ndarray, intrinsics: Sequence[float] = NYUD_INTRINSICS) -> np.ndarray:
    """Depth (metres, H x W) -> camera-frame points H x W x 3 (x right, y down, z forward)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    h, w = depth.shape
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    z = depth.astype(np.float64)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum of ``a`` (H x W x C) over the (2r+1)^2 window around each pixel (clipped at borders)."""
    h, w = a.shape[:2]
    ii = np.zeros((h + 1, w + 1) + a.shape[2:], dtype=np.float64)
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    y0 = np.clip(np.arange(h) - r, 0, h)
    y1 = np.clip(np.arange(h) + r + 1, 0, h)
    x0 = np.clip(np.arange(w) - r, 0, w)
    x1 = np.clip(np.arange(w) + r + 1, 0, w)
    return (ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0])


def estimate_normals(points: np.ndarray, valid: np.ndarray, window: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (H x W x 3, facing the camera) by a plane fit over a ``window`` x ``window``
    neighbourhood of valid points; returns ``(normals, ok)`` where ``ok`` marks fitted pixels."""
    r = window // 2
    wgt = valid.astype(np.float64)[..., None]
    p = np.where(valid[..., None], points, 0.0)
    outer = (p[..., :, None] * p[..., None, :]).reshape(p.shape[:2] + (9,))
    n = _box_sum(wgt, r)
    s1 = _box_sum(p, r)
    s2 = _box_sum(outer, r).reshape(p.shape[:2] + (3, 3))
    ok = valid & (n[..., 0] >= 4)
    cnt = np.maximum(n, 1.0)
    mu = s1 / cnt
    cov = s2 / cnt[..., None] - mu[..., :, None] * mu[..., None, :]
    normals = np.zeros_like(points)
    if ok.any():
        _, vecs = np.linalg.eigh(cov[ok])
        nrm = vecs[..., :, 0]  # eigenvector of the smallest eigenvalue
        flip = np.einsum("ij,ij->i", nrm, points[ok]) > 0  # face the camera (at the origin)
        nrm[flip] *= -1
        normals[ok] = nrm
    return normals, ok


def estimate_gravity(normals: np.ndarray, init_up: Sequence[float] = (0.0, -1.0, 0.0),
                     thresholds: Sequence[float] = (45.0, 15.0), iterations: int = 5) -> np.ndarray:
    """Up direction (unit, camera frame) from N x 3 unit normals, per Gupta et al.'s getYDir."""
    up = np.asarray(init_up, dtype=np.float64)
    up /= np.linalg.norm(up)
    for thr in thresholds:
        t = np.deg2rad(thr)
        for _ in range(iterations):
            sim = normals @ up
            par = normals[np.abs(sim) > np.cos(t)]
            perp = normals[np.abs(sim) < np.sin(t)]
            if len(par) + len(perp) < 3:
                return up
            a = perp.T @ perp - par.T @ par
            _, vecs = np.linalg.eigh(a)
            new = vecs[:, 0]
            up = new * (1.0 if new @ up >= 0 else -1.0)
    return up


def depth_to_hha(depth: np.ndarray, intrinsics: Sequence[float] = NYUD_INTRINSICS, window: int = 7,
                 up: Sequence[float] | None = None, return_up: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """HHA encoding (H x W x 3 uint8) of a depth map in metres (0/NaN = missing).

    ``up`` fixes the gravity direction (camera frame, y down) instead of estimating it;
    ``return_up`` also returns the direction used.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be H x W, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    d = np.where(valid, depth, 0.0)
    pts = backproject(d, intrinsics)
    normals, ok = estimate_normals(pts, valid, window)
    if up is None:
        sample = normals[ok][::max(1, int(ok.sum()) // 50000)]
        g = estimate_gravity(sample)
    else:
        g = np.asarray(up, dtype=np.float64)
        g = g / np.linalg.norm(g)
    disparity = 310.0 / np.maximum(d, 1.0)
    height_m = pts @ g
    lowest = height_m[valid].min() if valid.any() else 0.0
    if lowest > -0.9:
        lowest = -1.3
    height_cm = (height_m - lowest) * 100.0
    angle = np.degrees(np.arccos(np.clip(normals @ g, -1.0, 1.0))) + 38.0
    hha = np.stack([disparity, height_cm, angle], axis=-1)
    hha[~valid] = 0
    hha[valid & ~ok, 2] = 0
    out = np.clip(np.rint(hha), 0, 255).astype(np.uint8)
    return (out, g) if return_up else out
