"""Per-device rewrites and precision=auto decide from the device's features (tested with made-up devices)."""
from __future__ import annotations

import pytest
import torch

from fcnseg.errors import UserError
from fcnseg.runtime.choice import (
    CpuFeatures,
    DeviceSpec,
    choose_precision,
    plan_rewrites,
    resolve_device_name,
)

# /proc/cpuinfo flag sets of the CPUs seen (trimmed to what matters)
AVX2_EPYC = {"sse4_2", "avx", "avx2", "fma", "f16c"}  # Zen 2/3: no AVX-512, no VNNI
ZEN4 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
AMX_XEON = ZEN4 | {"avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "avx512_fp16"}
CASCADE_LAKE = AVX2_EPYC | {"avx512f", "avx512_vnni"}


def cpu(flags) -> DeviceSpec:
    return DeviceSpec("cpu", cpu=CpuFeatures(frozenset(flags)), name="test CPU")


H200 = DeviceSpec("cuda", cuda_capability=(9, 0), name="NVIDIA H200")


def test_depthwise_upsampling_on_cpu_not_on_cuda():
    for flags in (AVX2_EPYC, ZEN4, AMX_XEON):
        plan = plan_rewrites(cpu(flags))
        assert plan.depthwise and plan.channels_last and not plan.cudnn_benchmark
    gpu = plan_rewrites(H200)
    assert not gpu.depthwise and gpu.channels_last and not gpu.cudnn_benchmark
    assert plan_rewrites(H200, fixed_size=True).cudnn_benchmark
    assert not plan_rewrites(cpu(AMX_XEON), fixed_size=True).cudnn_benchmark
    assert any("dgrad" in w for w in gpu.why)


BOTH = {"cpu": ("bf16", "int8")}


def test_auto_precision_per_cpu():
    assert choose_precision(cpu(AVX2_EPYC)).precision == "fp32"
    # the shipped eligibility: int8 failed the accuracy check, so bf16 only, where the CPU has it
    assert choose_precision(cpu(AMX_XEON)).candidates == ("bf16",)
    assert choose_precision(cpu(ZEN4)).candidates == ("bf16",)
    assert choose_precision(cpu(CASCADE_LAKE)).precision == "fp32"
    assert "int8: not accuracy-checked" in choose_precision(cpu(CASCADE_LAKE)).reason
    # with int8 eligible (as for a model that passes its check): int8 first where VNNI / AMX-int8 is
    zen4 = choose_precision(cpu(ZEN4), eligible=BOTH)
    assert zen4.candidates == ("int8", "bf16") and "avx512_vnni" in zen4.reason and "avx512_bf16" in zen4.reason
    amx = choose_precision(cpu(AMX_XEON), eligible=BOTH)
    assert amx.candidates == ("int8", "bf16") and "amx_int8" in amx.reason and "amx_bf16" in amx.reason
    assert choose_precision(cpu(CASCADE_LAKE), eligible=BOTH).candidates == ("int8",)
    # without onnxruntime, or for a model the RGB calibration images do not fit: bf16 only
    assert choose_precision(cpu(AMX_XEON), int8_available=False, eligible=BOTH).candidates == ("bf16",)
    assert choose_precision(cpu(AMX_XEON), rgb=False, eligible=BOTH).candidates == ("bf16",)
    assert choose_precision(cpu(CASCADE_LAKE), rgb=False, eligible=BOTH).precision == "fp32"
    # a path that did not pass the accuracy check is never chosen
    assert choose_precision(cpu(AMX_XEON), eligible={"cpu": ("bf16",)}).candidates == ("bf16",)
    assert choose_precision(cpu(AMX_XEON), eligible={"cpu": ()}).precision == "fp32"
    # untrained weights: no accuracy check is possible
    assert choose_precision(cpu(AMX_XEON), trained=False).precision == "fp32"


def test_auto_precision_on_cuda_and_explicit_requests():
    assert choose_precision(H200).precision == "fp16"
    assert choose_precision(DeviceSpec("cuda", cuda_capability=(6, 1))).precision == "fp32"
    assert choose_precision(cpu(AVX2_EPYC), "bf16").precision == "bf16"  # asked for: kept
    assert choose_precision(H200, "fp32").reason == "requested"
    with pytest.raises(UserError, match="int8 is a CPU path"):
        choose_precision(H200, "int8")
    with pytest.raises(UserError, match="fp16 is for CUDA"):
        choose_precision(cpu(ZEN4), "fp16")
    with pytest.raises(UserError, match="unknown precision"):
        choose_precision(cpu(ZEN4), "fp8")


def test_this_machine_is_detected():
    spec = DeviceSpec.detect("cpu")
    assert spec.type == "cpu" and spec.name
    with open("/proc/cpuinfo") as fh:
        has_avx2 = " avx2" in fh.read()
    assert ("avx2" in spec.cpu.flags) == has_avx2


def test_device_auto():
    assert resolve_device_name("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device_name(None) in ("cuda", "cpu")
    assert resolve_device_name("cpu") == "cpu"
