"""HHA on a synthetic scene with known geometry: a flat floor and a wall, seen by a tilted camera."""
from __future__ import annotations

import numpy as np
import pytest

from fcnseg.data.hha import NYUD_INTRINSICS, depth_to_hha, estimate_gravity


def render(h: int = 120, w: int = 160, pitch_deg: float = 15.0, cam_height: float = 1.2, wall: float = 5.0):
    """Ray-cast depth of floor (y = cam_height below) and wall (z = wall ahead), camera pitched down."""
    s = w / 640
    k = tuple(v * s for v in NYUD_INTRINSICS)
    fx, fy, cx, cy = k
    th = np.deg2rad(pitch_deg)
    r = np.array([[1, 0, 0], [0, np.cos(th), np.sin(th)], [0, -np.sin(th), np.cos(th)]])  # camera -> world
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    dirs = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((h, w))], -1)  # z = 1: t is the depth
    dw = dirs @ r.T
    t_floor = np.where(dw[..., 1] > 1e-9, cam_height / np.maximum(dw[..., 1], 1e-9), np.inf)
    t_wall = wall / dw[..., 2]
    depth = np.minimum(t_floor, t_wall)
    world = dw * depth[..., None]
    up_cam = r.T @ np.array([0.0, -1.0, 0.0])
    return depth, t_floor < t_wall, world, up_cam, k


def away_from_edge(mask: np.ndarray, r: int = 4) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        out &= np.roll(mask, dy, 0)
        out &= np.roll(mask, dy, 1)
    out[:r] = out[-r:] = False
    out[:, :r] = out[:, -r:] = False
    return out


@pytest.mark.parametrize("pitch", [5.0, 15.0, 30.0])
def test_floor_and_wall(pitch):
    depth, floor, world, up_true, k = render(pitch_deg=pitch)
    hha, up = depth_to_hha(depth, k, return_up=True)
    assert hha.shape == depth.shape + (3,) and hha.dtype == np.uint8
    # gravity estimated from the normals
    assert np.degrees(np.arccos(np.clip(up @ up_true, -1, 1))) < 1.0
    fl, wa = away_from_edge(floor), away_from_edge(~floor)
    assert fl.sum() > 100 and wa.sum() > 100
    # disparity: 310 / depth (m), saturating
    np.testing.assert_allclose(hha[..., 0], np.clip(np.rint(310 / np.maximum(depth, 1.0)), 0, 255), atol=1)
    # height: the floor is the lowest surface -> 0 cm; the wall at its true height above the floor.
    # Up to 2 cm on the floor: as in the reference, gravity comes from 21 x 21 normals, which
    # the floor/wall crease tilts by ~0.3 degrees (2.6 cm over 5 m)
    assert np.abs(hha[fl, 1].astype(int)).max() <= 2
    true_h = np.clip((1.2 - world[..., 1]) * 100, 0, 255)
    assert np.abs(hha[wa, 1] - true_h[wa]).max() <= 2
    # angle with gravity + 38: floor 0 deg -> 38, wall 90 deg -> 128
    assert np.abs(hha[fl, 2].astype(int) - 38).max() <= 2
    assert np.abs(hha[wa, 2].astype(int) - 128).max() <= 2


def test_missing_depth_and_floor_fallback():
    depth, floor, world, up_true, k = render(pitch_deg=0.0)
    depth = depth.copy()
    depth[:10, :10] = 0
    depth[20, 20] = np.nan
    hha = depth_to_hha(depth, k)
    assert (hha[:10, :10] == 0).all() and (hha[20, 20] == 0).all()
    # only a wall close to camera height: the floor is assumed 1.3 m below the camera
    wall_only = np.where(~floor & (world[..., 1] > -0.5) & (world[..., 1] < 0.5), depth, 0)
    hha2 = depth_to_hha(wall_only, k, up=(0, -1, 0))
    valid = wall_only > 0
    expected = np.clip((1.3 - world[..., 1]) * 100, 0, 255)
    assert np.abs(hha2[valid, 1] - expected[valid]).max() <= 2


def test_gravity_from_ideal_normals():
    rng = np.random.default_rng(0)
    up = np.array([0.1, -0.98, -0.17])
    up /= np.linalg.norm(up)
    perp = np.cross(up, rng.normal(size=(200, 3)))
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    normals = np.concatenate([np.tile(up, (300, 1)), perp])
    g = estimate_gravity(normals)
    assert np.degrees(np.arccos(np.clip(g @ up, -1, 1))) < 0.5


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match="H x W"):
        depth_to_hha(np.ones((4, 4, 3)))


# ---------------------------------------------------------------------------- the reference code
GOLDEN = np.load(__import__("pathlib").Path(__file__).parent / "goldens" / "hha" / "scenes.npz")
SCENES = sorted({k.split("/")[0] for k in GOLDEN.files})


@pytest.mark.parametrize("scene", SCENES)
def test_matches_the_reference_saveHHA(scene):
    """The reference saveHHA (rcnn-depth, run in GNU Octave by scripts/hha_goldens.sh) on
    synthetic rooms, filled + raw depth as NYUD gives them: every channel within 1 grey
    level on >= 99.5 % of the pixels (the rest: plane fits over a few nearly collinear
    points at hole borders, where the last bits decide), gravity within 0.01 degree."""
    c = GOLDEN[f"{scene}/C"]
    k = (c[0, 0], c[1, 1], c[0, 2] - 1, c[1, 2] - 1)  # MATLAB's 1-based principal point
    hha, up = depth_to_hha(GOLDEN[f"{scene}/depth_mm"] / 1000.0, k, raw_depth=GOLDEN[f"{scene}/raw_mm"] / 1000.0,
                           return_up=True)
    ref = GOLDEN[f"{scene}/hha"]
    assert hha.shape == ref.shape and hha.dtype == np.uint8
    assert np.degrees(np.arccos(np.clip(-up @ GOLDEN[f"{scene}/ydir"], -1, 1))) < 0.01  # ydir points down
    diff = np.abs(hha.astype(int) - ref.astype(int))
    for ch in range(3):
        assert (diff[..., ch] <= 1).mean() >= 0.995, (scene, ch, (diff[..., ch] <= 1).mean())
    assert (diff[..., :2] <= 1).all()  # disparity and height: everywhere


def test_nyud_intrinsics_are_zero_based():
    """The NYU toolbox's principal point (325.58, 253.74) is MATLAB's, 1-based."""
    assert NYUD_INTRINSICS[2:] == pytest.approx((325.582449 - 1, 253.736166 - 1))
