"""Speed of the public predict API: the optimised default path against ``optimize=False``.

    OMP_NUM_THREADS=1 python scripts/predict_speed.py [--model camvid-fcn8s-lite0] [--repeats 15]
    OMP_NUM_THREADS=2 python scripts/predict_speed.py --threads 2 --compare camvid-fcn8s-lite2 camvid-fcn8s-lite2-up15

Times ``Segmenter.predict`` (decoded uint8 image -> label map) on the first shipped
CamVid sample, the two paths interleaved so background load hits both alike, and
checks that their label maps agree. ``--compare`` times the default path of several
models instead (what a user of each gets), interleaved the same way.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fcnseg

SAMPLES = Path(fcnseg.__file__).parent / "samples" / "camvid" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="camvid-fcn8s-lite0")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", nargs="+", metavar="MODEL", help="time these models' default paths instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = np.asarray(Image.open(sorted(SAMPLES.iterdir())[0]).convert("RGB"))
    if args.compare:
        paths = {name: fcnseg.load_model(name) for name in args.compare}
    else:
        paths = {"optimised": fcnseg.load_model(args.model), "plain": fcnseg.load_model(args.model, optimize=False)}
    for model in paths.values():  # warm-up (the optimised copy is built on first use)
        model.predict(image)
        model.predict(image)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for name, model in paths.items():
            t0 = time.perf_counter()
            model.predict(image)
            times[name].append(time.perf_counter() - t0)
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    label = "default paths" if args.compare else args.model
    print(f"{label}, {image.shape[0]}x{image.shape[1]}, {args.threads} thread(s), {args.repeats} repeats")
    for name, ms in med.items():
        print(f"  {name:9s} median {ms:7.1f} ms (min {1000 * min(times[name]):.1f})")
    if args.compare:
        return
    agree = float((paths["optimised"].predict(image) == paths["plain"].predict(image)).mean())
    print(f"  speed-up {med['plain'] / med['optimised']:.2f}x, label maps agree on {100 * agree:.3f} % of pixels")


if __name__ == "__main__":
    main()
