"""Score a model on a data set split with test-time augmentation (flip and multi-scale,
probabilities averaged) through the public inference API, with the reference metrics.

    python scripts/eval_tta.py camvid-fcn8s-lite0 ../shared/data/camvid --tta flip,scales=0.75,1,1.25
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fcnseg
from fcnseg.data import get_dataset
from fcnseg.metrics import ConfusionMatrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="shipped name or weights file")
    ap.add_argument("root", help="data set root")
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--split", default="val")
    ap.add_argument("--tta", action="append", default=None,
                    help="TTA spec as in `fcnseg predict --tta` (repeat to compare several)")
    args = ap.parse_args()
    model = fcnseg.load_model(args.model)
    ds = get_dataset(args.dataset, args.root, args.split)
    for tta in args.tta or [None]:
        cm = ConfusionMatrix(ds.num_classes, ignore_index=ds.ignore_index)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            sample = ds.load_raw(i)
            cm.update(model.predict(sample["image"], tta=tta).astype(np.int64), sample["label"].astype(np.int64))
        r = cm.compute()
        print(f"tta={tta or 'none'}: pixel acc {100 * r['pixel_acc']:.2f}  mean acc {100 * r['mean_acc']:.2f}  "
              f"mean IU {100 * r['mean_iou']:.2f}  fw IU {100 * r['fw_iou']:.2f}  ({len(ds)} images, "
              f"{time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
