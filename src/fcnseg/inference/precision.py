"""``precision="auto"``: the fastest precision that keeps a loaded model's answers.

:func:`fcnseg.runtime.choice.choose_precision` lists what the device runs well (int8
with VNNI / AMX-int8, bf16 with AMX-bf16 / avx512_bf16, fp16 on CUDA tensor cores) among
the paths that passed the documented accuracy check (docs/performance.md). Whether a
path is *faster* depends on the model as much as on the machine (bf16 made the shipped
Lite0, whose depthwise convolutions oneDNN runs poorly in bf16, slower on an AMX Xeon,
while it made VGG16 faster), so :func:`torch_backend` measures it: the shipped CamVid
sample images go through fp32 and each candidate, interleaved; a candidate is taken
when it is faster **and** its labels agree with fp32 on >= 99.5 % of the sample pixels.
The choice and the reason are printed once on stderr. ``fp32`` (or any precision given
by name) is used as asked, without measuring.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..runtime.choice import DeviceSpec, choose_precision, say_once

__all__ = ["MIN_AGREEMENT", "sample_images", "torch_backend"]

#: label agreement with fp32 on the shipped samples a lower precision must reach
MIN_AGREEMENT = 0.995
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples" / "camvid" / "images"


def sample_images() -> list[np.ndarray]:
    """The shipped CamVid sample images (4 x 360 x 480 RGB uint8): calibration and checks."""
    from ..imageio import as_rgb_array

    return [as_rgb_array(str(p)) for p in sorted(SAMPLES_DIR.glob("*.jpg"))]


def _int8_available() -> bool:
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def torch_backend(net: nn.Module, info: Any, device: torch.device, precision: str = "auto", *,
                  optimize: bool = True, make_segmenter: Callable[[Any], Any] | None = None) -> Any:
    """A :class:`~fcnseg.runtime.backends.TorchBackend` for ``net`` in the chosen precision.

    ``make_segmenter(backend)`` wraps a backend for the measurement (the Segmenter's own
    pre/post-processing); without it ``auto`` takes the first candidate unmeasured.
    """
    from ..runtime.backends import TorchBackend

    spec = DeviceSpec.detect(device)
    simple = not (getattr(net, "modalities", None) or getattr(net, "head_classes", None))
    if precision == "auto" and not optimize:  # optimize=False: the plain module as built
        return TorchBackend(net, device, optimize=False)
    modalities = getattr(net, "modalities", None)
    if precision == "auto" and modalities and set(modalities) - {"rgb"}:
        # the check runs RGB sample images; a net that also needs depth / HHA cannot take them
        say_once(f"{getattr(info, 'name', 'model')}: precision auto -> fp32: the accuracy check runs on RGB "
                 "samples, this model needs more inputs")
        return build_plain(net, device, optimize)
    choice = choose_precision(spec, precision, trained=bool(getattr(info, "trained", True)), rgb=simple,
                              int8_available=_int8_available())
    if choice.precision == "int8" and not simple:
        raise UserError("precision int8 runs single-input, single-head RGB models; use fp32 or bf16")

    def build(p: str) -> TorchBackend:
        calib = None
        if p == "int8":
            from ..preprocess import get_normalization, normalize

            norm = get_normalization(info.normalization)
            calib = [normalize(im, norm).unsqueeze(0) for im in sample_images()]
        return TorchBackend(net, device, optimize=optimize, precision=p, calibration=calib)

    if precision != "auto" or choice.precision == "fp32" or make_segmenter is None:
        if precision == "auto":
            say_once(f"{getattr(info, 'name', 'model')}: {choice.message()}")
        return build(choice.precision)
    candidates = list(choice.candidates) or [choice.precision]
    key = (str(getattr(info, "source", "")), str(device), tuple(candidates))
    if key in _CHOSEN:  # measured once per model and device in this process
        return build(_CHOSEN[key])
    best, message = _measure(build, make_segmenter, candidates)
    _CHOSEN[key] = best[0]
    say_once(f"{getattr(info, 'name', 'model')}: precision auto -> {best[0]}: {message}")
    return best[1]


_CHOSEN: dict[tuple[str, str, tuple[str, ...]], str] = {}


def build_plain(net: nn.Module, device: torch.device, optimize: bool) -> Any:
    from ..runtime.backends import TorchBackend

    return TorchBackend(net, device, optimize=optimize, precision="fp32")


def _measure(build: Callable[[str], Any], make_segmenter: Callable[[Any], Any],
             candidates: list[str]) -> tuple[tuple[str, Any], str]:
    """Time fp32 and each candidate on the samples (interleaved) and check label agreement."""
    images = sample_images()
    backends = {"fp32": build("fp32")}
    notes: list[str] = []
    for c in candidates:
        try:
            backends[c] = build(c)
        except UserError as exc:
            notes.append(f"{c} unavailable ({exc})")
    segs = {p: make_segmenter(b) for p, b in backends.items()}
    times: dict[str, list[float]] = {p: [] for p in segs}
    labels: dict[str, list[np.ndarray]] = {p: [] for p in segs}

    for p, s in list(segs.items()):  # warm-up: builds the optimised copy / quantises (not timed)
        try:
            s.predict(images[0])
        except Exception as exc:  # e.g. a layer without a bf16 kernel (AlexNet's LRN on the CPU)
            if p == "fp32":
                raise
            notes.append(f"{p} does not run this model ({type(exc).__name__})")
            del segs[p], times[p], labels[p]
    for i, im in enumerate(images):
        order = list(segs) if i % 2 == 0 else list(reversed(segs))
        for p in order:
            t = time.perf_counter()
            labels[p].append(segs[p].predict(im))
            times[p].append(time.perf_counter() - t)
    ref = np.concatenate([x.ravel() for x in labels["fp32"]])
    # the fastest of the 4 runs: on a shared machine the minimum is the least disturbed by other load
    t32 = float(np.min(times["fp32"]))
    best: tuple[str, Any] = ("fp32", backends["fp32"])
    best_t = t32
    for p in segs:
        if p == "fp32":
            continue
        agree = float((np.concatenate([x.ravel() for x in labels[p]]) == ref).mean())
        tp = float(np.min(times[p]))
        ok = agree >= MIN_AGREEMENT
        notes.append(f"{p} {tp * 1000:.0f} ms vs fp32 {t32 * 1000:.0f} ms per sample image (best of 4), "
                     f"label agreement {agree * 100:.2f} %" + ("" if ok else f" < {MIN_AGREEMENT * 100:.1f} %"))
        if ok and tp < best_t:
            best, best_t = (p, backends[p]), tp
    verdict = "fastest accurate path" if best[0] != "fp32" else "no lower precision was both faster and accurate"
    return best, f"{verdict} ({'; '.join(notes)}; measured on the shipped CamVid samples)"
