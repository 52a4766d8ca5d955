"""``fcnseg bench``: measured inference speed of a model, against the machine's own GEMM rate."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .common import add_batch_size, add_device, add_json, add_precision, check_json_path, emit_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="time a model's inference and compare it with this machine's GEMM rate",
        description="Time a model at one input size: counted GFLOPs, parameters, latency per batch (median, p10, "
                    "p90 after warm-up), images/s, achieved GFLOP/s, this machine's GEMM rate in the same "
                    "precision measured in the same run with the same threads and the share of it achieved, "
                    "and peak memory. --baseline also times a plain eager NCHW fp32 forward in the same "
                    "process (repeats interleaved) and prints the speed-up. Numbers depend on the load of the "
                    "machine: the load average is printed with them.")
    p.add_argument("--model", "-m", required=True,
                   help="architecture name, shipped model name, or a .safetensors / .pt weights file")
    p.add_argument("--size", default="500x500", help="input height x width (default 500x500)")
    add_batch_size(p, 1, "images per forward pass", old="--batch")
    add_device(p)
    add_precision(p, help="auto (default, or $FCNSEG_PRECISION): the lower precisions this device runs well "
                          "(bf16 with AMX/avx512_bf16, fp16 on CUDA; see docs/performance.md) timed against fp32, "
                          "the fastest benchmarked, printed with the reason; fp32; fp16 (CUDA); bf16; int8 (CPU, "
                          "post-training static quantisation calibrated on random inputs: speed only; see "
                          "scripts/int8_accuracy.py for accuracy)", old="--dtype")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="execution engine (onnxruntime: exported to ONNX in a temporary folder first)")
    p.add_argument("--baseline", action="store_true",
                   help="also time plain eager NCHW fp32 in the same run and print the speed-up")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC weights and activations (default on; --no-channels-last for NCHW)")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="fold BatchNorm into convolutions and run class-diagonal upsampling depthwise "
                        "(exact; default on)")
    p.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=None,
                   help="TorchScript freeze + optimize_for_inference per input shape (oneDNN weight "
                        "pre-packing, conv+ReLU fusion; default: as the library's default path, on for the CPU "
                        "when --optimize and the net has at most 256 MB of weights)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile with Inductor weight freezing (slow first call; not timed)")
    p.add_argument("--end-to-end", action="store_true",
                   help="time decoded uint8 image -> label map (normalisation, forward, argmax), batch 1")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and onnxruntime (default: torch's, i.e. OMP_NUM_THREADS or the "
                        "cores; use fewer when another process keeps a core busy)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of an architecture given by name")
    p.add_argument("--gemm-size", type=int, default=None,
                   help="n of the n x n fp32 GEMM that measures the machine (default 2048 CPU, 8192 CUDA)")
    add_json(p, "every figure")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress messages on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    from ..runtime.bench import BenchConfig, format_report, parse_size, run_bench

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.compile and args.freeze:
        raise UserError("--compile and --freeze are alternatives; choose one")
    if args.gemm_size is not None and args.gemm_size < 1:
        raise UserError(f"--gemm-size must be >= 1, got {args.gemm_size}")
    check_json_path(args.json)
    cfg = BenchConfig(model=args.model, size=parse_size(args.size, "--size"), batch=args.batch_size, device=args.device,
                      dtype=args.precision, backend=args.backend, channels_last=args.channels_last,
                      optimize=args.optimize, freeze=args.freeze, compile=args.compile, baseline=args.baseline,
                      end_to_end=args.end_to_end, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                      num_classes=args.num_classes, gemm_size=args.gemm_size)
    progress = None if args.quiet else (lambda msg: print(f"fcnseg bench: {msg} ...", file=sys.stderr, flush=True))
    from ..runtime.memory import is_out_of_memory

    try:
        result = run_bench(cfg, progress=progress)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise UserError(f"--size {args.size} / --batch-size {args.batch_size}: out of memory while benchmarking "
                        "(the estimate made before it fitted, tightly); use a smaller size") from None
    # the file first (a closed stdout must not lose it); a failed write is reported after the report
    failed = None
    try:
        to_stdout = emit_json(args.json, result)
    except UserError as exc:
        to_stdout, failed = False, exc
    if not to_stdout:
        print(format_report(result))
    if failed is not None:
        sys.stdout.flush()
        raise UserError(f"{failed} (the report is printed above)")
    return 0
