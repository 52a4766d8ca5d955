"""Print the README's model table (markdown), measured by the code: parameters,
output stride, receptive field (from the layer geometry) and GFLOPs at 500x500
(counted from the layers on the meta device: 2 x multiply-adds)."""
from __future__ import annotations

import argparse

import torch

from fcnseg.complexity import count_flops, count_params
from fcnseg.models import get_model, list_models, model_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, nargs=2, default=(500, 500), metavar=("H", "W"))
    args = ap.parse_args()
    h, w = args.size
    print(f"| model | trunk | classes | params | stride | receptive field | GFLOPs at {h}x{w} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in list_models():
        spec = model_spec(name)
        with torch.device("meta"):
            model = get_model(name).eval()
        chans = sum(getattr(model, "modalities", {"rgb": 3}).values())
        gflops = count_flops(model, (1, chans, h, w)) / 1e9
        rf = getattr(model, "receptive_field", None)
        print(f"| `{name}` | {spec.trunk} | {getattr(model, 'num_classes', spec.default_num_classes)} | "
              f"{count_params(model) / 1e6:.1f}M | {spec.output_stride} | {rf if rf else '-'} | {gflops:.1f} |")


if __name__ == "__main__":
    main()
