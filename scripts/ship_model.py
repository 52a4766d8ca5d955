"""Package a training run's best weights as a shipped model (fp16 safetensors in
``src/fcnseg/weights/NAME.safetensors``) with its class names, palette,
normalisation and validation scores in the metadata.

    python scripts/ship_model.py runs/camvid-fcn8s-lite0 camvid-fcn8s-lite0
    python scripts/ship_model.py runs/camvid-fcn8s-lite2-trainval-ft camvid-fcn8s-lite2 \
        --weights final.safetensors --stage1 runs/camvid-fcn8s-lite2-trainval/final.safetensors \
        --heldout docs/camvid-lite2-heldout.json

``--heldout``: a JSON object recorded as the model's ``heldout`` provenance: the
held-out-sequence scores of its recipe (docs/results.md), which a model trained on
every drive cannot be scored by itself.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fcnseg.weights import load_weights, read_meta, save_weights

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "fcnseg" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--weights", default="best.safetensors",
                    help="file in RUN_DIR to ship (final.safetensors: the last step, for a run "
                         "without a held-out split)")
    ap.add_argument("--out", type=Path, help="where to write (default: src/fcnseg/weights/NAME.safetensors)")
    ap.add_argument("--stage1", type=Path, help="weights of the stage this run was initialised from: its recipe "
                                                "and scores are recorded too")
    ap.add_argument("--heldout", type=Path, help="JSON file: the recipe's held-out-sequence scores, recorded as "
                                                 "the 'heldout' provenance")
    args = ap.parse_args()
    state, meta = load_weights(args.run_dir / args.weights)
    # a model card keeps where the weights came from under "provenance"; files from before cards, flat
    prov = meta.setdefault("provenance", {}) if "card_version" in meta else meta
    prov.update({"name": args.name, "source_run": str(args.run_dir), "dtype": "float16"})
    if args.stage1 is not None:
        stage1 = read_meta(args.stage1)
        prov["stage1"] = stage1.get("provenance", stage1)
    if args.heldout is not None:
        prov["heldout"] = json.loads(args.heldout.read_text())
    out = save_weights(state, args.out or WEIGHTS / f"{args.name}.safetensors", meta, dtype=torch.float16)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); val: {prov.get('val')}")


if __name__ == "__main__":
    main()
