"""Measured inference speed of a segmentation net, next to what the machine can do.

One run of :func:`run_bench` reports, for a model at one input size:

* GFLOPs per image counted from the layers (:mod:`fcnseg.complexity`) and parameters;
* latency per batch (median, p10, p90 over timed repeats after warm-up), images/s and
  the achieved GFLOP/s;
* the machine's matrix-multiply rate *in the precision that ran* (fp32 / bf16 / fp16
  ``torch.mm``; int8 ``torch._int_mm`` or onnxruntime's ``MatMulInteger`` for the
  onnxruntime int8 path), measured in the same run with the same thread count, and the
  achieved rate as a share of it (plus the fp32 rate and share for a lower precision);
* the path that ran (``method``) and, for ``precision="auto"`` (the default), which
  precision was chosen and why (the device's candidates, each timed against fp32);
* peak memory: the process's resident set (CPU) or ``max_memory_allocated`` (CUDA);
* with ``baseline=True``, a plain eager NCHW fp32 forward of the same network timed in
  the same process, its repeats interleaved with the measured configuration's so that
  background load hits both alike, and the speed-up.

``end_to_end=True`` times the whole path from a decoded ``H x W x 3`` uint8 image to a
``H x W`` label map: normalisation, forward and argmax, for both configurations.
"""
from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .choice import cpu_model_name  # re-exported: fcnseg.runtime.bench.cpu_model_name

__all__ = ["BenchConfig", "run_bench", "format_report", "measure_gemm_rate", "parse_size", "cpu_model_name"]


@dataclass
class BenchConfig:
    model: str
    size: tuple[int, int] = (500, 500)
    batch: int = 1
    device: str = "cpu"
    dtype: str | None = None  # auto | fp32 | fp16 | bf16 | int8 (None: $FCNSEG_PRECISION or auto)
    backend: str = "torch"  # torch | onnxruntime
    channels_last: bool = True
    optimize: bool = True  # fold BatchNorm + depthwise upsampling
    freeze: bool | None = None  # TorchScript freeze per input shape (None: as the library's default path)
    compile: bool = False  # torch.compile (inductor, freezing)
    baseline: bool = False
    end_to_end: bool = False
    warmup: int = 2
    repeats: int = 10
    threads: int | None = None
    num_classes: int | None = None
    gemm_size: int | None = None
    calibration_batches: int = 4
    seed: int = 0


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    times_ms: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        p10, p50, p90 = np.percentile(ms, [10, 50, 90])
        return cls(float(p50), float(p10), float(p90), float(ms.min()), len(ms), [round(float(t), 3) for t in ms])


# --------------------------------------------------------------------------- small helpers
def parse_size(text: str, option: str = "size") -> tuple[int, int]:
    """``"500x500"`` / ``"360x480"`` (height x width) or ``"64"`` -> ``(H, W)``; errors name ``option``."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected HxW, e.g. 500x500 or 360x480") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise UserError(f"{option} {text!r}: expected HxW with positive integers, e.g. 360x480")
    return nums[0], nums[1]


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_gemm_rate(device: torch.device, size: int | None = None, repeats: int = 5,
                      dtype: str = "fp32", engine: str = "torch") -> dict[str, Any]:
    """GFLOP/s (2 n^3 per product) of an ``n x n`` by ``n x n`` matrix multiply in ``dtype``.

    ``fp32`` / ``bf16`` / ``fp16``: ``torch.mm`` (TF32 off on CUDA, so fp32 is a true fp32
    rate); ``int8``: ``torch._int_mm`` (int8 x int8 -> int32) with ``engine="torch"``, or
    onnxruntime's ``MatMulInteger`` (uint8 x int8, the kernel its quantised convolutions use)
    with ``engine="onnxruntime"``. Same thread count as the run. Returns the median and best
    rate over ``repeats`` after one warm-up, the dtype and what was timed.
    """
    n = size if size is not None else (8192 if device.type == "cuda" else 2048)
    if n < 1:
        raise UserError(f"size must be >= 1, got {n}")
    sync = _sync(device)
    if dtype == "int8" and engine == "onnxruntime":
        run, what = _ort_int8_gemm(n)
    elif dtype == "int8":
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device)
        run, what = (lambda: torch._int_mm(a, b)), "torch._int_mm int8 x int8 -> int32"
    else:
        from .fast import DTYPES

        if dtype not in DTYPES:
            raise UserError(f"no GEMM rate for dtype {dtype!r}")
        a = torch.randn(n, n, device=device).to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        run, what = (lambda: torch.mm(a, b)), f"torch.mm {dtype}"
    prev = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        run()
        sync()
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            sync()
            rates.append(2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    finally:
        if prev is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return {"n": n, "dtype": dtype, "what": what, "median_gflops": float(statistics.median(rates)),
            "best_gflops": float(max(rates))}


def _ort_int8_gemm(n: int) -> tuple[Callable[[], Any], str]:
    """onnxruntime ``MatMulInteger`` (u8 activations x s8 weights, as its QDQ convolutions) on the CPU."""
    import onnx
    from onnx import TensorProto, helper

    from .fast import onnx_session

    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [helper.make_tensor("w", TensorProto.INT8, [n, n], w.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    onnx.save(model, tmp.name)
    session = onnx_session(tmp.name, torch.get_num_threads())
    os.unlink(tmp.name)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    return (lambda: session.run(["y"], {"a": a})), "onnxruntime MatMulInteger uint8 x int8 -> int32"


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    from .allocator import proc_kb

    hwm = proc_kb("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _fill_zero_layers(model: nn.Module, seed: int) -> int:
    """Give an untrained FCN's all-zero score layers random weights.

    The reference initialisation zeroes them, which makes every logit 0 and the
    agreement check between configurations vacuous; the arithmetic (and so the
    speed) is the same either way. Returns how many layers were filled.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / m.weight[0].numel()) ** 0.5)
                count += 1
    return count


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- runners
def _plain_runner(model: nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The baseline: the model as built, eager, NCHW, fp32."""
    net = model.to(device).eval()

    def run(x: Tensor) -> Tensor:
        return net(x)

    return run


def _build_measured(cfg: BenchConfig, model: nn.Module, device: torch.device, threads: int,
                    example: Tensor, workdir: Path) -> tuple[Callable[[Tensor], Tensor], str, bool]:
    """The configuration under test: ``(runner, method description, wants channels-last input)``."""
    from .fast import optimize_for_inference, quantize_int8

    if cfg.dtype == "int8":
        if device.type != "cpu":
            raise UserError("dtype int8 is a CPU path; use device cpu")
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        calib = [torch.randn(example.shape, generator=gen) for _ in range(cfg.calibration_batches)]
        q = quantize_int8(model, calib, backend=cfg.backend, threads=threads,
                          out_path=workdir / "model_int8.onnx" if cfg.backend == "onnxruntime" else None)
        return q, f"int8 static quantisation: {q.method}; calibration on random inputs (speed only)", False
    if cfg.backend == "onnxruntime":
        if device.type != "cpu":
            raise UserError("backend onnxruntime is benchmarked on the CPU here; use device cpu")
        if cfg.dtype != "fp32":
            raise UserError(f"backend onnxruntime supports dtype fp32 or int8, not {cfg.dtype}")
        if cfg.compile or cfg.freeze:
            raise UserError("compile and freeze are torch options; drop them with backend onnxruntime")
        fast = optimize_for_inference(model, channels_last=False, fold_bn=cfg.optimize, depthwise=cfg.optimize,
                                      mode="onnxruntime", threads=threads)
        return fast, fast.method + ", fp32", False
    if cfg.dtype == "fp16" and device.type == "cpu":
        raise UserError("dtype fp16 is for device cuda; on the CPU use bf16 or int8")
    from .backends import freeze_by_default

    freeze = cfg.freeze if cfg.freeze is not None else (cfg.optimize and freeze_by_default(model, device, cfg.dtype))
    mode = "compile" if cfg.compile else ("jit" if freeze else "eager")
    fast = optimize_for_inference(model.to(device), channels_last=cfg.channels_last, fold_bn=cfg.optimize,
                                  depthwise=None if cfg.optimize else False, fixed_size=True, mode=mode,
                                  dtype=cfg.dtype, example_input=example)
    return fast, f"torch {fast.method}", cfg.channels_last


def _pick_fastest(cfg: BenchConfig, candidates: list[str], model: nn.Module, device: torch.device, threads: int,
                  example: Tensor, workdir: Path) -> tuple[BenchConfig, str]:
    """fp32 and each candidate precision timed on ``example`` (1 warm-up, best of 2): the fastest."""
    timed: dict[str, float] = {}
    failed: list[str] = []
    for p in ["fp32", *candidates]:
        c = replace(cfg, dtype=p, backend="onnxruntime" if p == "int8" else cfg.backend)
        x = example.to(device)
        sync = _sync(device)
        try:
            runner, _, wants_cl = _build_measured(c, model, device, threads, example, workdir)
            if wants_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                runner(x)
                sync()
        except Exception as exc:  # e.g. a layer without a bf16 kernel (AlexNet's LRN on the CPU)
            if p == "fp32":
                raise
            failed.append(f"{p} does not run ({type(exc).__name__})")
            continue
        with torch.inference_mode():
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                runner(x)
                sync()
                best = min(best, time.perf_counter() - t)
        timed[p] = best
        del runner
    fastest = min(timed, key=timed.get)
    text = ", ".join([f"{p} {t * 1000:.1f} ms" for p, t in timed.items()] + failed)
    return replace(cfg, dtype=fastest, backend="onnxruntime" if fastest == "int8" else cfg.backend), text


# --------------------------------------------------------------------------- the run
def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                     sync: Callable[[], Any]) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, ``repeats`` times, interleaved and in alternating
    order (forward, then reversed) so that a machine's drift in load or clock falls on all of
    them alike; ``sync`` waits for queued device work (CUDA) before each reading."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(reversed(fns))):
            t = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark ``cfg.model`` as configured; returns every figure as a JSON-ready dict."""
    from ..complexity import count_flops, count_params, input_channels
    from ..inference import UntrainedModelWarning
    from ..inference.loader import load_net
    from ..preprocess import get_normalization, normalize
    from .fast import cpu_has_vnni, default_threads, labels_from_logits, normalize_batch

    say = progress or (lambda _msg: None)
    if cfg.batch < 1 or cfg.repeats < 1 or cfg.warmup < 0:
        raise UserError("batch size and repeats must be >= 1 and warmup >= 0")
    from .choice import default_precision

    cfg = replace(cfg, dtype=default_precision(cfg.dtype))
    if cfg.dtype not in ("auto", "fp32", "fp16", "bf16", "int8"):
        raise UserError(f"unknown precision {cfg.dtype!r}; expected auto, fp32, fp16, bf16 or int8")
    if cfg.backend not in ("torch", "onnxruntime"):
        raise UserError(f"unknown backend {cfg.backend!r}; expected torch or onnxruntime")
    if cfg.end_to_end and cfg.batch != 1:
        raise UserError("end_to_end times one decoded image at a time; use batch size 1")
    if cfg.gemm_size is not None and cfg.gemm_size < 1:
        raise UserError(f"gemm_size must be >= 1, got {cfg.gemm_size}")
    from .backends import resolve_device
    from .choice import DeviceSpec, choose_precision, resolve_device_name

    device = resolve_device(resolve_device_name(cfg.device))
    chosen = None
    candidates: list[str] = []
    if cfg.dtype == "auto":
        # the lower precisions this device runs well (fcnseg.runtime.choice); which one is fastest
        # for this net is measured below, as load_model does (random weights: speed only)
        choice = choose_precision(DeviceSpec.detect(device), "auto", trained=True,
                                  int8_available=_has_onnxruntime())
        candidates = [p for p in choice.candidates
                      if not (p == "int8" and (cfg.freeze or cfg.compile or not cfg.optimize))  # torch options
                      and not (p != "int8" and cfg.backend == "onnxruntime")]  # onnxruntime: fp32 or int8
        chosen = f"precision auto: candidates {', '.join(candidates) or 'none'} ({choice.reason})"
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    height, width = cfg.size

    say(f"building {cfg.model}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)  # speed does not depend on training
        model, card = load_net(cfg.model, num_classes=cfg.num_classes, purpose="bench")
    model = model.eval()
    filled = 0 if card.trained else _fill_zero_layers(model, cfg.seed)
    in_ch = input_channels(model)
    if cfg.end_to_end and in_ch != 3:
        raise UserError(f"end_to_end needs an RGB model; {cfg.model} takes {in_ch} input channels")
    from .fast import DTYPES
    from .memory import check_fits

    # before any allocation; auto, int8 and the fp32 baseline run fp32 too, so those are estimated at fp32
    low = cfg.dtype in ("fp16", "bf16") and not cfg.baseline
    est_dtype = DTYPES[cfg.dtype] if low else torch.float32
    check_fits(model, (cfg.batch, in_ch, height, width), device, "size", est_dtype)
    flops = count_flops(model, (1, in_ch, height, width))
    params = count_params(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    example = torch.randn((cfg.batch, in_ch, height, width), generator=gen)
    norm = get_normalization(card.normalization)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen).numpy()

    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-") as tmp:
        t0 = time.perf_counter()
        say("preparing the measured configuration")
        if candidates:
            cfg, pick = _pick_fastest(cfg, candidates, model, device, threads, example, Path(tmp))
            chosen += f"; measured here: {pick} -> {cfg.dtype}"
            say(chosen)
        elif cfg.dtype == "auto":
            cfg = replace(cfg, dtype="fp32")
            chosen += " -> fp32"
        runner, method, wants_cl = _build_measured(cfg, model, device, threads, example, Path(tmp))
        prepare_s = time.perf_counter() - t0
        eager_net = getattr(runner, "eager_net", None)
        executed = count_flops(eager_net, (1, in_ch, height, width)) if eager_net is not None else flops
        base_runner = _plain_runner(model, device) if cfg.baseline else None

        if cfg.end_to_end:
            def measured() -> Any:
                x = normalize_batch(image, norm, channels_last=wants_cl).to(device)
                return labels_from_logits(runner(x))[0].cpu().numpy()

            def baseline() -> Any:
                x = normalize(image, norm).unsqueeze(0).to(device)
                return base_runner(x).argmax(1)[0].to(torch.uint8).cpu().numpy()
        else:
            x_meas = example.to(device)
            if wants_cl:
                x_meas = x_meas.contiguous(memory_format=torch.channels_last)
            x_base = example.to(device)

            def measured() -> Any:
                return runner(x_meas)

            def baseline() -> Any:
                return base_runner(x_base)

        sync = _sync(device)
        times: dict[str, list[float]] = {"measured": [], "baseline": []}
        fns = {"measured": measured, "baseline": baseline} if cfg.baseline else {"measured": measured}
        with torch.inference_mode():
            say(f"warm-up ({cfg.warmup} run(s) each)")
            first_s = {}
            for name, fn in fns.items():
                for i in range(cfg.warmup):
                    t = time.perf_counter()
                    fn()
                    sync()
                    if i == 0:
                        first_s[name] = time.perf_counter() - t
            # agreement of the two configurations on this input (not timed)
            agreement = None
            if cfg.baseline:
                if cfg.end_to_end:
                    agreement = {"label_agreement": float((measured() == baseline()).mean())}
                else:
                    a, b = measured().float().cpu(), baseline().float().cpu()
                    scale = float(b.abs().max()) or 1.0
                    agreement = {"max_rel_diff": float((a - b).abs().max()) / scale,
                                 "argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rss_reset = device.type == "cpu" and _reset_peak_rss()
            say(f"timing ({cfg.repeats} repeat(s){', interleaved with the baseline' if cfg.baseline else ''})")
            for name, seconds in time_interleaved(fns, cfg.repeats, sync).items():
                times[name] += seconds
        if device.type == "cuda":
            memory = {"kind": "cuda max_memory_allocated", "mb": torch.cuda.max_memory_allocated(device) / 2 ** 20}
        else:
            memory = {"kind": "peak RSS of the process" + (" during the timed runs" if rss_reset else ""),
                      "mb": _peak_rss_mb()}
    say(f"measuring the {cfg.dtype} GEMM rate")
    gemm = measure_gemm_rate(device, cfg.gemm_size, dtype=cfg.dtype,
                             engine="onnxruntime" if cfg.backend == "onnxruntime" else "torch")
    gemm_fp32 = gemm if cfg.dtype == "fp32" else measure_gemm_rate(device, cfg.gemm_size)

    timing = Timing.of(times["measured"])
    gflop_img = flops / 1e9
    # the achieved rate counts the arithmetic really done (depthwise upsampling skips zero filters)
    achieved = executed / 1e9 * cfg.batch / (timing.median_ms / 1000.0)
    result: dict[str, Any] = {
        "model": cfg.model,
        "size": [height, width],
        "batch": cfg.batch,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "cpu_vnni": cpu_has_vnni(),
        "dtype": cfg.dtype,
        "backend": cfg.backend,
        "end_to_end": cfg.end_to_end,
        "input_scale": card.input_scale,
        "method": method,
        "threads": threads,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "gflops_per_image": gflop_img,
        "executed_gflops_per_image": executed / 1e9,
        "untrained_layers_filled": filled,
        "params": params,
        "latency_ms": asdict(timing),
        "per_image_ms": timing.median_ms / cfg.batch,
        "images_per_s": cfg.batch / (timing.median_ms / 1000.0),
        "achieved_gflops": achieved,
        "precision_choice": chosen,
        "gemm": gemm,
        "gemm_fp32": gemm_fp32,
        "pct_of_gemm_peak": 100.0 * achieved / gemm["median_gflops"],
        "pct_of_fp32_gemm": 100.0 * achieved / gemm_fp32["median_gflops"],
        "memory": memory,
        "prepare_s": prepare_s,
        "first_call_s": first_s.get("measured"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
    if cfg.baseline:
        base = Timing.of(times["baseline"])
        result["baseline"] = {"method": "torch eager, NCHW, fp32, as built", "latency_ms": asdict(base),
                              "achieved_gflops": gflop_img * cfg.batch / (base.median_ms / 1000.0)}
        result["speedup"] = base.median_ms / timing.median_ms
        result["agreement"] = agreement
    return result


def format_report(r: dict[str, Any]) -> str:
    """The human-readable report of :func:`run_bench`'s result."""
    lat = r["latency_ms"]
    h, w = r["size"]
    what = "decoded uint8 image -> label map (normalise, forward, argmax)" if r["end_to_end"] else "forward pass"
    lines = [
        f"model        {r['model']}  {h}x{w}  batch {r['batch']}  {r['dtype']}  on {r['device']} ({r['device_name']})",
        f"method       {r['method']}" + (f"  [{r['precision_choice']}]" if r.get("precision_choice") else ""),
        f"timed        {what}; {r['warmup']} warm-up run(s), then {r['repeats']} timed repeat(s); "
        f"{r['threads']} thread(s); torch {r['torch']}",
        f"complexity   {r['gflops_per_image']:.2f} GFLOPs per image (counted, 2 x MACs of conv/deconv/linear); "
        f"{r['params'] / 1e6:.2f} M parameters"
        + (f"; {r['executed_gflops_per_image']:.2f} GFLOPs executed after optimisation"
           if abs(r["executed_gflops_per_image"] - r["gflops_per_image"]) > 1e-9 else ""),
        f"latency      median {lat['median_ms']:.1f} ms  p10 {lat['p10_ms']:.1f}  p90 {lat['p90_ms']:.1f}  "
        f"min {lat['min_ms']:.1f} (per batch)",
        f"throughput   {r['images_per_s']:.2f} images/s  ({r['per_image_ms']:.1f} ms per image)",
        f"compute      {r['achieved_gflops']:.1f} GFLOP/s achieved (executed FLOPs); same-dtype GEMM "
        f"({r['gemm'].get('what', 'fp32')}, {r['gemm']['n']}^3) in this run: "
        f"{r['gemm']['median_gflops']:.1f} GFLOP/s median ({r['gemm']['best_gflops']:.1f} best) -> "
        f"{r['pct_of_gemm_peak']:.0f}% of the {r['gemm'].get('dtype', 'fp32')} GEMM rate"
        + ("" if r["gemm"].get("dtype", "fp32") == "fp32" or "gemm_fp32" not in r else
           f"; fp32 GEMM {r['gemm_fp32']['median_gflops']:.1f} GFLOP/s ({r['pct_of_fp32_gemm']:.0f}%)"),
        f"memory       {r['memory']['mb']:.0f} MB ({r['memory']['kind']})",
        f"prepare      {r['prepare_s']:.1f} s to build the configuration; first call "
        f"{(r['first_call_s'] or 0) * 1000:.0f} ms",
    ]
    scale = r.get("input_scale", 1.0)
    if scale != 1.0:  # the card resizes every image before the net: say what image these times serve
        lines.append(f"input scale  the model's card runs images at {scale:g}x (predict/eval resize each image by "
                     f"it); timed here: a {h}x{w} net input, which predict gives an image of about "
                     f"{round(h / scale)}x{round(w / scale)}")
    if r.get("untrained_layers_filled"):
        lines.append(f"weights      untrained; {r['untrained_layers_filled']} all-zero score layer(s) given random "
                     "weights so that outputs (and the agreement check) are not all zero")
    if r.get("cpu_vnni") is not None or r["dtype"] == "int8":
        lines.append(f"cpu          int8 dot-product instructions: {r.get('cpu_vnni') or 'none (no VNNI)'}")
    if "baseline" in r:
        b = r["baseline"]["latency_ms"]
        agree = r.get("agreement") or {}
        agree_txt = ", ".join(f"{k} {v:.3g}" for k, v in agree.items())
        lines += [
            f"baseline     {r['baseline']['method']}: median {b['median_ms']:.1f} ms  p10 {b['p10_ms']:.1f}  "
            f"p90 {b['p90_ms']:.1f}  min {b['min_ms']:.1f}  (repeats interleaved with the above)",
            f"speed-up     {r['speedup']:.2f}x (baseline median / measured median); {agree_txt}",
        ]
    if r.get("load_average"):
        la = r["load_average"]
        lines.append(f"load         1/5/15-min load average at the end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} "
                     f"on {os.cpu_count()} CPU(s)")
    return "\n".join(lines)
