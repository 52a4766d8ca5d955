#!/usr/bin/env python
"""Per-megapixel cost of ``load_model(MODEL, precision="fp32").predict`` as images grow (docs/performance.md).

    python scripts/big_image_cost.py 1024 448 1024 4000 1024 10000 1024 4000@2048 1024

The last line is a summary: per size the first and the repeated ("warm") cost, and the warm cost
against the warm 1 MP cost (repeat each size to get it).

Each argument is a square side in pixels, optionally ``:TILE`` (a fixed tile core instead of
``tile="auto"``) and ``@MB`` (the memory budget auto tiling may use; default: half the memory
available). The image is a shipped CamVid sample repeated to the size (real texture). Prints
one JSON line per run: wall and CPU (``time.process_time``) seconds per megapixel, the tiling
chosen, the kernel's share (system seconds and minor page faults per
megapixel), the peak RSS of the run and the load average. Run it with ``OMP_NUM_THREADS=1`` on a
busy machine and compare each big image with the 1 MP runs next to it (FCNSEG_FREEZE=0 keeps
repeated sizes from running frozen graphs that one-off sizes do not get).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import fcnseg  # first: torch must see fcnseg's allocator setting at its first allocation

# isort: split
import numpy as np
import torch

from fcnseg.inference.precision import sample_images
from fcnseg.inference.tiling import memory_budget
from fcnseg.runtime.bench import _peak_rss_mb, _reset_peak_rss


def main(argv: list[str]) -> int:
    model = fcnseg.load_model(os.environ.get("MODEL", "camvid-fcn8s-lite0"), precision="fp32")
    base = sample_images()[0]
    runs: dict[str, list[float]] = {}  # size -> wall s/MP of each run, in order
    for spec in argv:
        spec, _, budget = spec.partition("@")
        model.memory_budget = int(budget) * 2 ** 20 if budget else None
        side, _, tile = spec.partition(":")
        h = w = int(side)
        img = np.tile(base, (h // base.shape[0] + 1, w // base.shape[1] + 1, 1))[:h, :w]
        model.predict(img[:256, :256])
        kw = {"tile": int(tile)} if tile else {}
        grid = model.tile_grid(h, w, **kw)
        budget_mb = (model.memory_budget or memory_budget()) // 2 ** 20  # what the plan was made with
        _reset_peak_rss()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c, t = time.process_time(), time.perf_counter()
        model.predict(img, **kw)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        mp = h * w / 1e6
        print(json.dumps({"size": f"{h}x{w}", "mp": round(mp, 2), "s": round(wall, 2), "s_per_mp": round(wall / mp, 3),
                          "cpu_s_per_mp": round(cpu / mp, 3),
                          "sys_s_per_mp": round((r1.ru_stime - r0.ru_stime) / mp, 3),
                          "faults_per_mp": round((r1.ru_minflt - r0.ru_minflt) / mp),
                          "cores": grid.cores if grid else 0, "windows": len(grid) if grid else 1,
                          "budget_mb": budget_mb,
                          "peak_rss_mb": round(_peak_rss_mb()), "load": os.getloadavg()[0],
                          "threads": torch.get_num_threads()}), flush=True)
        runs.setdefault(f"{h}x{w}", []).append(wall / mp)
    print(json.dumps({"summary": summary(runs)}), flush=True)
    return 0


def summary(runs: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """First and repeated ("warm": the median of the later runs) s/MP of each size, and the warm cost
    against the warm 1024x1024 cost: issue 16's ratio, like for like (the first image of a size
    also pays its page faults once, at any size)."""
    out: dict[str, dict[str, float]] = {}
    for size, walls in runs.items():
        out[size] = {"first": round(walls[0], 3)}
        if len(walls) > 1:
            out[size]["warm"] = round(float(np.median(walls[1:])), 3)
    ref = out.get("1024x1024", {}).get("warm")
    for row in out.values():
        if ref and "warm" in row:
            row["warm_vs_1mp"] = round(row["warm"] / ref, 2)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
