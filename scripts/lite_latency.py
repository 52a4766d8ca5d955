"""CPU latency of the FCN-8s EfficientNet-Lite0/1/2 nets, measured in one run so that the
ratios hold under whatever load the machine has: repeats are interleaved (lite0, lite1,
lite2, lite0, ...) and the median per model is reported, eager fp32 NCHW and the
inference-optimised path (BatchNorm folded, channels-last) side by side.

    python scripts/lite_latency.py --size 360 480 --threads 1 --repeats 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fcnseg.complexity import count_flops
from fcnseg.fast import optimize_for_inference
from fcnseg.models import get_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["fcn8s_lite0", "fcn8s_lite1", "fcn8s_lite2"])
    ap.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.size
    x = torch.randn(1, 3, h, w)
    nets = {}
    for name in args.models:
        eager = get_model(name, 11).eval()
        nets[(name, "eager")] = (eager, x)
        nets[(name, "optimized")] = (optimize_for_inference(eager), x.contiguous(memory_format=torch.channels_last))
    times: dict[tuple[str, str], list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        for k, (net, inp) in nets.items():
            for _ in range(args.warmup):
                net(inp)
        for _ in range(args.repeats):
            for k, (net, inp) in nets.items():
                t = time.perf_counter()
                net(inp)
                times[k].append(time.perf_counter() - t)
    base = {mode: statistics.median(times[(args.models[0], mode)]) for mode in ("eager", "optimized")}
    print(f"batch 1, {h}x{w}, {args.threads} thread(s), median of {args.repeats} interleaved repeats, "
          f"torch {torch.__version__}")
    print(f"| model | GFLOPs at {h}x{w} | eager fp32 ms | ratio | optimized ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        with torch.device("meta"):
            gflops = count_flops(get_model(name, 11).eval(), (1, 3, h, w)) / 1e9
        e, o = (statistics.median(times[(name, m)]) for m in ("eager", "optimized"))
        print(f"| `{name}` | {gflops:.2f} | {1000 * e:.0f} | {e / base['eager']:.2f} | {1000 * o:.0f} | "
              f"{o / base['optimized']:.2f} |")


if __name__ == "__main__":
    main()
