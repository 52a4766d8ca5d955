#!/usr/bin/env python
"""Side by side on one device, repeats interleaved: the plain module, fcnseg's fast path and a
torchfcn-style FCN8s, fcn8s_vgg16 at 500x500 batch 16 (issue 16's GPU comparison).

    python scripts/gpu_compare.py                       # CUDA: fp16, batch 16, 500x500
    python scripts/gpu_compare.py --dry-run             # CPU, tiny sizes: checks the script runs

Configurations (all eager, inference mode):
  plain_fp32        get_model("fcn8s_vgg16") as built: NCHW fp32 (TF32 as torch defaults)
  plain_half_cl     the same module .half() (bf16 on the CPU) in channels-last
  torchfcn_half_cl  torchfcn's FCN8s (wkentaro/pytorch-fcn, re-typed below: no torchfcn needed) the same way
  fast_half         fcnseg.runtime.fast.optimize_for_inference: the device's rewrite plan
                    (CUDA: no depthwise upsampling, channels-last, cudnn.benchmark), half precision
  fast_half_dw      the same with the depthwise upsampling forced on (the old path; 0.54x on an H200)
  lite0_fast_half   camvid-fcn8s-lite0 at 360x480, fast path, half precision

Prints ms per image for each (median of the repeats, CUDA-synchronised) and the ratios
the issue's targets are stated in; ``--json`` writes every repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings

import torch
from torch import nn


class TorchfcnFCN8s(nn.Module):
    """torchfcn.models.FCN8s (pytorch-fcn), layer for layer: padding 100, crops 5 / 9 / 31."""

    def __init__(self, n_class: int = 21) -> None:
        super().__init__()

        def block(cin: int, cout: int, n: int, first_pad: int = 1) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(n):
                layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=first_pad if i == 0 else 1),
                           nn.ReLU(inplace=True)]
            return layers + [nn.MaxPool2d(2, stride=2, ceil_mode=True)]

        self.to_pool3 = nn.Sequential(*block(3, 64, 2, first_pad=100), *block(64, 128, 2), *block(128, 256, 3))
        self.to_pool4 = nn.Sequential(*block(256, 512, 3))
        self.to_pool5 = nn.Sequential(*block(512, 512, 3))
        self.fc = nn.Sequential(nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout2d(),
                                nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout2d())
        self.score_fr = nn.Conv2d(4096, n_class, 1)
        self.score_pool3 = nn.Conv2d(256, n_class, 1)
        self.score_pool4 = nn.Conv2d(512, n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        h = self.score_fr(self.fc(self.to_pool5(pool4)))
        upscore2 = self.upscore2(h)
        h = self.score_pool4(pool4 * 0.01)[:, :, 5:5 + upscore2.size(2), 5:5 + upscore2.size(3)]
        upscore_pool4 = self.upscore_pool4(upscore2 + h)
        h = self.score_pool3(pool3 * 0.0001)[:, :, 9:9 + upscore_pool4.size(2), 9:9 + upscore_pool4.size(3)]
        h = self.upscore8(upscore_pool4 + h)
        return h[:, :, 31:31 + x.size(2), 31:31 + x.size(3)].contiguous()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", default="500x500")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--half", choices=("fp16", "bf16"), default=None, help="default: fp16 on CUDA, bf16 on the CPU")
    p.add_argument("--dry-run", action="store_true", help="CPU, batch 1, 64x64, 1 repeat: checks that it runs")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.batch, args.size, args.warmup, args.repeats = "cpu", 1, "64x64", 0, 1
    from fcnseg.inference import UntrainedModelWarning, load_model
    from fcnseg.models import get_model
    from fcnseg.runtime.bench import time_interleaved
    from fcnseg.runtime.fast import optimize_for_inference

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_compare: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    half_name = args.half or ("fp16" if dev.type == "cuda" else "bf16")
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[half_name]
    h, w = (int(v) for v in args.size.split("x"))
    cl = torch.channels_last
    torch.manual_seed(0)
    warnings.simplefilter("ignore", UntrainedModelWarning)

    plain = get_model("fcn8s_vgg16", 21).eval().to(dev)
    x32 = torch.randn(args.batch, 3, h, w, device=dev)
    xh = x32.to(half).contiguous(memory_format=cl)
    plain_h = get_model("fcn8s_vgg16", 21).eval().to(dev).to(half).to(memory_format=cl)
    tfcn = TorchfcnFCN8s(21).eval().to(dev).to(half).to(memory_format=cl)
    fast = optimize_for_inference(plain, dtype=half_name, fixed_size=True)
    fast_dw = optimize_for_inference(plain, dtype=half_name, fixed_size=True, depthwise=True)
    lite = load_model("camvid-fcn8s-lite0", device=dev, precision="fp32").net
    lite_fast = optimize_for_inference(lite, dtype=half_name, fixed_size=True)
    lh, lw = (360, 480) if not args.dry_run else (64, 64)
    xl = torch.randn(args.batch, 3, lh, lw, device=dev).to(half).contiguous(memory_format=cl)
    configs = {
        "plain_fp32": lambda: plain(x32),
        f"plain_{half_name}_cl": lambda: plain_h(xh),
        f"torchfcn_{half_name}_cl": lambda: tfcn(xh),
        # the same half-precision channels-last input as the eager configurations (no conversion timed)
        f"fast_{half_name}": lambda: fast(xh),
        f"fast_{half_name}_dw": lambda: fast_dw(xh),
        f"lite0_fast_{half_name}": lambda: lite_fast(xl),
    }
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in configs}
    print(f"gpu_compare: {args.device} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), "
          f"fcn8s_vgg16 {h}x{w} batch {args.batch}, {half_name}; fast path steps: {fast.method}", flush=True)
    with torch.inference_mode():
        for k, fn in configs.items():
            for _ in range(args.warmup):
                fn()
            sync()
        for k, seconds in time_interleaved(configs, args.repeats, sync).items():
            times[k] += seconds
    per_img = {k: statistics.median(v) * 1000 / args.batch for k, v in times.items()}
    for k, v in per_img.items():
        print(f"  {k:24s} {v:8.3f} ms/image", flush=True)
    tf = per_img[f"torchfcn_{half_name}_cl"]
    ph = per_img[f"plain_{half_name}_cl"]
    fh = per_img[f"fast_{half_name}"]
    print(f"  fast path vs torchfcn eager {half_name} channels-last: {tf / fh:.2f}x (target >= 1.3x); "
          f"vs the plain module {half_name} channels-last: {ph / fh:.2f}x (target >= 1.0x); "
          f"vs plain fp32: {per_img['plain_fp32'] / fh:.2f}x; depthwise forced on: "
          f"{per_img[f'fast_{half_name}_dw'] / fh:.2f}x the fast path's time", flush=True)
    if args.json:
        with open(args.json, "w") as fh_:
            json.dump({"device": str(dev), "batch": args.batch, "size": [h, w], "half": half_name,
                       "ms_per_image": per_img, "times_s": times, "load": os.getloadavg()}, fh_, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
