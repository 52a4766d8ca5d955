#!/usr/bin/env python
"""Accuracy cost of the int8 CPU path: mean IoU of a trained model in fp32 and in int8.

    python scripts/int8_accuracy.py WEIGHTS DATA_ROOT [--dataset camvid] [--split val]
        [--calib-split train] [--calib-images 32] [--backend onnxruntime|torch] [--limit N]

WEIGHTS is anything ``fcnseg.inference.load_model`` accepts (a ``.safetensors`` weights
file, a training checkpoint, a shipped model name). The int8 model is calibrated
(post-training static quantisation, :func:`fcnseg.runtime.fast.quantize_int8`) on
``--calib-images`` images of ``--calib-split`` (spread evenly over it), never on the
split that is scored. Both models score the same images with the reference metrics
(:class:`fcnseg.metrics.ConfusionMatrix`); the script prints mean IoU, pixel accuracy,
the difference in IoU points and how many pixels the two label maps agree on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="weights file / checkpoint / shipped model name")
    p.add_argument("root", type=Path, help="data set root folder (e.g. ../shared/data/camvid)")
    p.add_argument("--dataset", default="camvid", help="data set name for fcnseg.data.get_dataset (default camvid)")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--calib-split", default="train", help="split the calibration images come from (default train)")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="int8 engine: onnxruntime's static quantiser (default) or torch FX (x86)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images (quick checks)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fcnseg.data import get_dataset
    from fcnseg.data.transforms import Normalize
    from fcnseg.errors import UserError
    from fcnseg.inference import load_net
    from fcnseg.metrics import ConfusionMatrix
    from fcnseg.runtime.fast import cpu_has_vnni, default_threads, quantize_int8

    try:
        threads = args.threads or default_threads()
        torch.set_num_threads(threads)
        net, card = load_net(args.weights)
        if not card.trained:
            print(f"warning: {args.weights} is an untrained architecture; the IoU figures mean nothing",
                  file=sys.stderr)
        transform = Normalize(card.normalization)
        val = get_dataset(args.dataset, args.root, args.split, transform=transform)
        calib_set = get_dataset(args.dataset, args.root, args.calib_split, transform=transform)
    except UserError as exc:
        print(f"int8_accuracy: error: {exc}", file=sys.stderr)
        return 2
    k = card.num_classes
    n_cal = max(1, min(args.calib_images, len(calib_set)))
    cal_idx = np.linspace(0, len(calib_set) - 1, n_cal).round().astype(int)
    calibration = [calib_set[int(i)]["image"].unsqueeze(0) for i in cal_idx]

    t0 = time.perf_counter()
    q = quantize_int8(net, calibration, backend=args.backend, threads=threads)
    quant_s = time.perf_counter() - t0

    cm32, cm8 = ConfusionMatrix(k), ConfusionMatrix(k)
    agree = total = 0
    t32 = t8 = 0.0
    n = len(val) if args.limit is None else min(args.limit, len(val))
    with torch.inference_mode():
        for i in range(n):
            sample = val[i]
            x, label = sample["image"].unsqueeze(0), sample["label"]
            t = time.perf_counter()
            p32 = net(x).argmax(1)[0]
            t32 += time.perf_counter() - t
            t = time.perf_counter()
            p8 = q(x).argmax(1)[0]
            t8 += time.perf_counter() - t
            cm32.update(p32, label)
            cm8.update(p8, label)
            agree += int((p32 == p8).sum())
            total += p32.numel()
    s32, s8 = cm32.compute(), cm8.compute()
    result = {
        "weights": str(args.weights), "model": card.model, "dataset": args.dataset, "split": args.split,
        "images": n, "calibration": f"{n_cal} images of {args.calib_split}", "int8_method": q.method,
        "cpu_vnni": cpu_has_vnni(), "threads": threads,
        "fp32": {"mean_iou": s32["mean_iou"], "pixel_acc": s32["pixel_acc"], "iou": list(map(float, s32["iou"]))},
        "int8": {"mean_iou": s8["mean_iou"], "pixel_acc": s8["pixel_acc"], "iou": list(map(float, s8["iou"]))},
        "mean_iou_drop_points": 100.0 * (s32["mean_iou"] - s8["mean_iou"]),
        "label_agreement": agree / max(total, 1),
        "ms_per_image": {"fp32_eager": 1000 * t32 / max(n, 1), "int8": 1000 * t8 / max(n, 1)},
        "quantize_s": quant_s,
    }
    print(f"{result['model']} on {args.dataset} {args.split} ({n} images), int8 = {q.method}")
    print(f"  calibration: {result['calibration']}; CPU VNNI: {result['cpu_vnni'] or 'none'}; {threads} thread(s)")
    print(f"  fp32  mean IoU {100 * s32['mean_iou']:.2f}  pixel acc {100 * s32['pixel_acc']:.2f}")
    print(f"  int8  mean IoU {100 * s8['mean_iou']:.2f}  pixel acc {100 * s8['pixel_acc']:.2f}")
    print(f"  drop  {result['mean_iou_drop_points']:.2f} IoU points; label maps agree on "
          f"{100 * result['label_agreement']:.2f}% of pixels")
    print(f"  time  fp32 eager {result['ms_per_image']['fp32_eager']:.1f} ms/image, int8 "
          f"{result['ms_per_image']['int8']:.1f} ms/image (one pass each, not a benchmark)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
