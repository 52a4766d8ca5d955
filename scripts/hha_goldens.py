"""Write tests/goldens/hha/scenes.npz: HHA of synthetic depth scenes by the reference code.

Run by scripts/hha_goldens.sh (which fetches the reference MATLAB code and runs it in
GNU Octave). Needs numpy only. Each scene is a ray-cast room (floor, walls, ceiling,
optionally a table) seen by a pitched and rolled camera with NYUD-like intrinsics
scaled to the image size; "noisy" scenes add Kinect-like depth noise (sigma =
1.425e-3 z^2 m, z in m, quantised to mm) and holes. As NYUD provides them, the
reference gets two depth maps: the filled depth (every pixel has a value: here the
noisy depth itself) and the raw depth (0 where the sensor gave nothing: the holes).

Stored per scene: ``NAME/depth_mm`` and ``NAME/raw_mm`` (uint16, millimetres),
``NAME/C`` (3 x 3 camera matrix, MATLAB 1-based principal point), ``NAME/hha``
(H x W x 3 uint8, the reference saveHHA) and ``NAME/ydir`` (the reference gravity
direction, camera frame, y down).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

NYUD_C = np.array([[5.1885790117450188e+02, 0, 3.2558244941119034e+02],
                   [0, 5.1946961112127485e+02, 2.5373616633400465e+02], [0, 0, 1]])

# name: (height, width, pitch deg (down), roll deg, camera height m, table, noise, seed)
SCENES = {
    "room_clean": (120, 160, 12.0, 3.0, 1.3, False, False, 1),
    "room_noisy": (240, 320, 20.0, -5.0, 1.2, False, True, 2),
    "table_noisy": (120, 160, 35.0, 2.0, 1.5, True, True, 3),
    "level_wall": (96, 128, 0.0, 0.0, 0.3, False, False, 4),  # no floor in view, gravity = camera y
}


def camera(h: int, w: int) -> np.ndarray:
    c = NYUD_C.copy()
    c[:2] *= w / 640.0
    return c


def render(h, w, pitch, roll, cam_h, table, noise, seed):
    """Depth in metres (filled) and raw depth (0 at holes), both H x W."""
    c = camera(h, w)
    u, v = np.meshgrid(np.arange(1, w + 1, dtype=np.float64), np.arange(1, h + 1, dtype=np.float64))
    dirs = np.stack([(u - c[0, 2]) / c[0, 0], (v - c[1, 2]) / c[1, 1], np.ones((h, w))], -1)  # z = 1
    p, r = np.deg2rad(pitch), np.deg2rad(roll)
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])  # pitch down
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    d = dirs @ (rx @ rz).T  # world: x right, y down, z forward; camera at (0, -cam_h, 0) above the floor y=0
    origin = np.array([0.0, -cam_h, 0.0])
    planes = [(1, 0.0), (1, -2.7), (0, -2.0), (0, 2.3), (2, 4.5)]  # floor, ceiling, walls, back wall
    t = np.full((h, w), np.inf)
    for axis, pos in planes:
        with np.errstate(divide="ignore", invalid="ignore"):
            ti = (pos - origin[axis]) / d[..., axis]
        t = np.where((ti > 1e-6) & (ti < t), ti, t)
    if table:  # a box: top at y = -0.75, x in [-0.6, 0.5], z in [1.2, 2.2]
        lo, hi = np.array([-0.6, -0.75, 1.2]), np.array([0.5, 0.0, 2.2])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - origin) / d, (hi - origin) / d
        tn = np.nanmax(np.minimum(t1, t2), axis=-1)
        tf = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (tn <= tf) & (tn > 1e-6)
        t = np.where(hit & (tn < t), tn, t)
    depth = t  # the ray direction has z = 1 in the camera frame: t is the depth
    rng = np.random.default_rng(seed)
    raw = depth.copy()
    if noise:
        depth = depth + rng.standard_normal(depth.shape) * 1.425e-3 * depth ** 2
        holes = np.zeros((h, w), bool)
        for _ in range(6):
            cy, cx, ry, rx_ = rng.integers(0, h), rng.integers(0, w), rng.integers(2, h // 8), rng.integers(2, w // 8)
            yy, xx = np.ogrid[:h, :w]
            holes |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx_) ** 2 <= 1
        holes |= rng.random((h, w)) < 0.02
        raw = depth.copy()
        raw[holes] = 0
    else:
        raw = depth.copy()
    depth_mm = np.clip(np.rint(depth * 1000), 1, 65535).astype(np.uint16)
    raw_mm = np.where(raw > 0, depth_mm, 0).astype(np.uint16)
    return depth_mm, raw_mm, c


OCTAVE = r"""
pkg load image;
addpath('{ref}/rgbdutils'); addpath('{ref}/rcnn-depth/rcnn'); addpath('{ref}/rcnn-depth/mcg/depth_features');
names = {names};
for i = 1:numel(names)
  n = names{{i}};
  C = dlmread(fullfile('{tmp}', [n '.C']));
  sz = dlmread(fullfile('{tmp}', [n '.size']));
  f = fopen(fullfile('{tmp}', [n '.depth'])); D = fread(f, [sz(2) sz(1)], 'uint16')'; fclose(f);
  f = fopen(fullfile('{tmp}', [n '.raw'])); RD = fread(f, [sz(2) sz(1)], 'uint16')'; fclose(f);
  HHA = saveHHA([], C, [], D, RD);
  [pc, N, yDir] = processDepthImage(double(D) / 10, RD == 0, C);
  f = fopen(fullfile('{tmp}', [n '.hha']), 'w'); fwrite(f, permute(HHA, [3 2 1]), 'uint8'); fclose(f);
  dlmwrite(fullfile('{tmp}', [n '.ydir']), yDir', 'precision', 17);
  printf('%s done\n', n);
end
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="folder with rcnn-depth/ and rgbdutils/")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        for name, spec in SCENES.items():
            depth_mm, raw_mm, c = render(*spec)
            arrays.update({f"{name}/depth_mm": depth_mm, f"{name}/raw_mm": raw_mm, f"{name}/C": c})
            depth_mm.tofile(tmpd / f"{name}.depth")
            raw_mm.tofile(tmpd / f"{name}.raw")
            np.savetxt(tmpd / f"{name}.C", c, delimiter=",", fmt="%.17g")
            np.savetxt(tmpd / f"{name}.size", [depth_mm.shape], delimiter=",", fmt="%d")
        names = "{" + ", ".join(f"'{n}'" for n in SCENES) + "}"
        script = OCTAVE.format(ref=args.reference, tmp=tmpd, names=names)
        subprocess.run(["octave", "--no-gui", "--quiet", "--no-window-system", "--eval", script], check=True)
        for name in SCENES:
            h, w = arrays[f"{name}/depth_mm"].shape
            arrays[f"{name}/hha"] = np.fromfile(tmpd / f"{name}.hha", np.uint8).reshape(h, w, 3)
            arrays[f"{name}/ydir"] = np.loadtxt(tmpd / f"{name}.ydir", delimiter=",")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "scenes.npz", **arrays)
    print(f"wrote {args.out / 'scenes.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
