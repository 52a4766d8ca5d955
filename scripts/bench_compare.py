#!/usr/bin/env python
"""Time several inference configurations of one model in one process, repeats interleaved.

    python scripts/bench_compare.py --model fcn8s_vgg16 --size 500x500 --repeats 5 \
        [--configs eager_nchw,channels_last,optimized,jit,ort_fp32,ort_int8] [--end-to-end] [--json out.json]

The configurations run round-robin (the order rotates every repeat), so background
load hits them alike and the ratios are meaningful even on a busy machine; the
1/5/15-minute load averages are printed before and after. This is the script behind
the comparison tables of docs/performance.md; ``fcnseg bench`` times one configuration
against the baseline.

Configurations: eager_nchw (the baseline: the model as built), channels_last (only the
layout), optimized (BN folding + depthwise upsampling + channels_last), jit (optimized +
TorchScript freeze), compile (optimized + torch.compile; slow to prepare), bf16
(optimized in bfloat16), ort_fp32 (onnxruntime), ort_int8 (onnxruntime static int8),
fx_int8 (torch FX x86 static int8).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import fcnseg  # noqa: F401  first: torch must see fcnseg's allocator setting (huge pages) at its first allocation

# isort: split
import numpy as np
import torch

ALL = ["eager_nchw", "channels_last", "optimized", "unfused", "jit", "compile", "bf16", "jit_bf16", "ort_fp32",
       "ort_int8", "fx_int8"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--size", default="500x500")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--configs", default="eager_nchw,channels_last,optimized,jit,ort_fp32,ort_int8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--end-to-end", action="store_true", help="decoded uint8 image -> uint8 label map")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import warnings

    from fcnseg.complexity import count_flops
    from fcnseg.inference import UntrainedModelWarning, load_net
    from fcnseg.preprocess import normalize
    from fcnseg.runtime.bench import _fill_zero_layers, cpu_model_name, measure_gemm_rate, parse_size
    from fcnseg.runtime.export import export_onnx
    from fcnseg.runtime.fast import (
        cpu_has_vnni,
        default_threads,
        labels_from_logits,
        normalize_batch,
        onnx_session,
        optimize_for_inference,
        quantize_int8,
    )

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in ALL]
    if unknown:
        p.error(f"unknown config {unknown[0]!r}; choose from {', '.join(ALL)}")
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    h, w = parse_size(args.size)
    load_before = os.getloadavg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        model, card = load_net(args.model, num_classes=args.num_classes)
    filled = 0 if card.trained else _fill_zero_layers(model, 0)
    model.eval()
    flops = count_flops(model, (1, 3, h, w))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, h, w, generator=gen)
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen).numpy()
    norm = card.normalization
    tmp = tempfile.TemporaryDirectory(prefix="fcnseg-cmp-")

    prep: dict[str, float] = {}
    runners: dict[str, tuple] = {}  # name -> (forward(x), wants channels_last input)
    for name in configs:
        t0 = time.perf_counter()
        if name == "eager_nchw":
            runners[name] = (model, False)
        elif name == "channels_last":
            runners[name] = (copy.deepcopy(model).to(memory_format=torch.channels_last), True)
        elif name == "optimized":
            runners[name] = (optimize_for_inference(model), True)
        elif name == "unfused":  # the optimised copy without the conv + activation fusion
            runners[name] = (optimize_for_inference(model, fuse_activations=False), True)
        elif name == "jit":
            runners[name] = (optimize_for_inference(model, mode="jit", example_input=x), True)
        elif name == "compile":
            f = optimize_for_inference(model, mode="compile")
            with torch.inference_mode():
                f(x)  # compile now, not in the timed loop
            runners[name] = (f, True)
        elif name == "bf16":
            runners[name] = (optimize_for_inference(model, dtype="bf16"), True)
        elif name == "jit_bf16":  # bf16 and a frozen TorchScript graph (what auto -> bf16 runs for small nets)
            runners[name] = (optimize_for_inference(model, dtype="bf16", mode="jit", example_input=x), True)
        elif name == "ort_fp32":
            net = optimize_for_inference(model, channels_last=False).eager_net
            sess = onnx_session(export_onnx(net, Path(tmp.name) / "m.onnx", example_size=(h, w)), threads)
            runners[name] = (lambda t, s=sess: torch.from_numpy(s.run(["logits"], {"input": t.numpy()})[0]), False)
        elif name in ("ort_int8", "fx_int8"):
            calib = [torch.randn(1, 3, h, w, generator=gen) for _ in range(4)]
            q = quantize_int8(model, calib, backend="onnxruntime" if name == "ort_int8" else "torch", threads=threads)
            runners[name] = (q, False)
        prep[name] = time.perf_counter() - t0
        print(f"prepared {name} in {prep[name]:.1f} s", file=sys.stderr, flush=True)

    def make_call(name: str):
        fwd, cl = runners[name]
        if args.end_to_end:
            if name == "eager_nchw":
                return lambda: fwd(normalize(image, norm).unsqueeze(0)).argmax(1)[0].to(torch.uint8).numpy()
            return lambda: labels_from_logits(fwd(normalize_batch(image, norm, channels_last=cl)))[0].numpy()
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        return lambda: fwd(xx)

    calls = {n: make_call(n) for n in configs}
    times: dict[str, list[float]] = {n: [] for n in configs}
    outs = {}
    with torch.inference_mode():
        for n in configs:
            for _ in range(args.warmup):
                outs[n] = calls[n]()
        for i in range(args.repeats):
            order = configs[i % len(configs):] + configs[: i % len(configs)]
            for n in order:
                t0 = time.perf_counter()
                calls[n]()
                times[n].append(time.perf_counter() - t0)
    gemm = measure_gemm_rate(torch.device("cpu"))
    load_after = os.getloadavg()
    ref = outs[configs[0]]
    base_med = float(np.median(times[configs[0]]))
    rows = []
    for n in configs:
        t = np.asarray(times[n]) * 1000
        med = float(np.median(t))
        o = outs[n]
        if args.end_to_end:
            agree = float((np.asarray(o) == np.asarray(ref)).mean())
            diff = None
        else:
            o, r = torch.as_tensor(o).float(), torch.as_tensor(ref).float()
            diff = float((o - r).abs().max() / r.abs().max())
            agree = float((o.argmax(1) == r.argmax(1)).float().mean())
        rows.append({"config": n, "median_ms": med, "p10_ms": float(np.percentile(t, 10)),
                     "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
                     "speedup_vs_first": base_med * 1000 / med, "gflops_per_s": flops / 1e9 / (med / 1000),
                     "pct_gemm": 100 * flops / 1e9 / (med / 1000) / gemm["median_gflops"],
                     "max_rel_diff": diff, "argmax_agreement": agree, "prepare_s": prep[n]})
    print(f"{args.model} {h}x{w} batch 1, {'end to end (uint8 image -> labels)' if args.end_to_end else 'forward'}; "
          f"{flops / 1e9:.2f} GFLOPs counted; {threads} thread(s); {args.warmup} warm-up + {args.repeats} "
          f"interleaved repeats; CPU {cpu_model_name()} (VNNI: {cpu_has_vnni() or 'none'}); torch {torch.__version__}"
          + ("; untrained: score layers filled with random weights" if filled else ""))
    print(f"fp32 GEMM {gemm['n']}^3: {gemm['median_gflops']:.1f} GFLOP/s median, {gemm['best_gflops']:.1f} best; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"{'config':15s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'min':>8s} {'speed-up':>8s} {'GFLOP/s':>8s} "
          f"{'%GEMM':>6s} {'max rel diff':>12s} {'agree':>6s}")
    for r in rows:
        diff = "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        print(f"{r['config']:15s} {r['median_ms']:10.1f} {r['p10_ms']:8.1f} {r['p90_ms']:8.1f} {r['min_ms']:8.1f} "
              f"{r['speedup_vs_first']:7.2f}x {r['gflops_per_s']:8.1f} {r['pct_gemm']:5.0f}% {diff:>12s} "
              f"{r['argmax_agreement']:6.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "size": [h, w], "threads": threads, "gemm": gemm,
                                         "load_before": load_before, "load_after": load_after,
                                         "end_to_end": args.end_to_end, "rows": rows,
                                         "times_ms": {n: [1000 * t for t in v] for n, v in times.items()}},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
