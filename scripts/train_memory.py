"""Peak memory of real CPU training steps against `runtime.memory.training_bytes` (its calibration).

    OMP_NUM_THREADS=2 python scripts/train_memory.py fcn8s_lite2 4 288 384

Runs 3 SGD steps (momentum, cross-entropy) of MODEL on a random batch of B x 3 x H x W with the
trainer's allocator settings and prints what they needed (peak RSS growth from just before the
first step, plus the weights, which were in place already) next to the estimate's (low, high).
Each run in its own process: ru_maxrss is a process-wide high-water mark.
"""
from __future__ import annotations

import argparse
import resource

import torch
import torch.nn.functional as F

import fcnseg  # noqa: F401  (allocator environment before torch allocates)
from fcnseg.models import get_model
from fcnseg.runtime.allocator import keep_freed_memory, proc_kb
from fcnseg.runtime.memory import GiB, state_bytes, training_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("height", type=int)
    ap.add_argument("width", type=int)
    ap.add_argument("--classes", type=int, default=11)
    args = ap.parse_args()
    keep_freed_memory()
    net = get_model(args.model, args.classes).train()
    shape = (args.batch, 3, args.height, args.width)
    low, high = training_bytes(net, shape)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(shape)
    y = torch.randint(0, args.classes, (args.batch, args.height, args.width))
    base = proc_kb("/proc/self/status", "VmRSS") * 1024
    for _ in range(3):
        out = net(x)
        out = out["out"] if isinstance(out, dict) else out
        F.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base + state_bytes(net)
    print(f"{args.model} batch {args.batch} {args.height}x{args.width}: measured {peak / GiB:.2f} GiB, "
          f"estimate {low / GiB:.2f}-{high / GiB:.2f} GiB ({'inside' if low <= peak <= high else 'OUTSIDE'})")


if __name__ == "__main__":
    main()
