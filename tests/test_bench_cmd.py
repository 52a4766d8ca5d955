"""``fcnseg bench`` runs on a tiny size with few repeats and reports every field (no timing asserts)."""
from __future__ import annotations

import json

import pytest

from fcnseg.cli.main import main
from fcnseg.errors import UserError
from fcnseg.runtime.bench import BenchConfig, format_report, measure_gemm_rate, parse_size, run_bench

TINY = ["--size", "32x48", "--warmup", "1", "--repeats", "2", "--gemm-size", "128", "--num-classes", "3", "-q",
        "--threads", "1"]
REPORT_LINES = ["model", "method", "timed", "complexity", "latency", "throughput", "compute", "memory", "prepare"]


def check_result(r: dict) -> None:
    assert r["size"] == [32, 48] and r["batch"] >= 1
    assert r["gflops_per_image"] > 0 and r["params"] > 0
    lat = r["latency_ms"]
    assert lat["repeats"] == 2 and len(lat["times_ms"]) == 2
    assert 0 < lat["min_ms"] <= lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert r["images_per_s"] > 0 and r["achieved_gflops"] > 0
    assert r["gemm"]["n"] == 128 and r["gemm"]["median_gflops"] > 0
    assert r["pct_of_gemm_peak"] > 0
    assert r["memory"]["mb"] > 0 and r["memory"]["kind"]
    assert r["threads"] == 1 and r["warmup"] == 1 and r["method"]


def test_bench_with_baseline_prints_and_writes_every_field(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["bench", "--model", "fcn8s_lite0", *TINY, "--baseline", "--precision", "fp32", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for key in REPORT_LINES + ["baseline", "speed-up"]:
        assert any(line.startswith(key) for line in text.splitlines()), key
    assert "% of the " in text and "GEMM rate" in text and "p10" in text and "p90" in text and "images/s" in text
    r = json.loads(out.read_text())
    check_result(r)
    assert "folded 49 BatchNorm" in r["method"] and "channels_last" in r["method"]
    assert r["executed_gflops_per_image"] < r["gflops_per_image"]  # depthwise upsampling skips zeros
    assert r["baseline"]["latency_ms"]["repeats"] == 2 and r["speedup"] > 0
    # the optimised configuration computes the same thing as the baseline
    assert r["agreement"]["max_rel_diff"] < 1e-4 and r["agreement"]["argmax_agreement"] > 0.99


def test_bench_end_to_end_from_decoded_image(capsys):
    rc = main(["bench", "--model", "fcn8s_lite0", *TINY, "--end-to-end", "--baseline", "--no-channels-last",
               "--precision", "fp32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "decoded uint8 image -> label map" in text and "label_agreement 1" in text


def test_bench_library_onnxruntime_and_int8():
    r = run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), warmup=1, repeats=2, gemm_size=128,
                              num_classes=3, backend="onnxruntime", baseline=True, threads=1, dtype="fp32"))
    check_result(r)
    assert "onnxruntime" in r["method"] and r["agreement"]["max_rel_diff"] < 1e-4
    q = run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), warmup=1, repeats=2, gemm_size=128,
                              num_classes=3, dtype="int8", backend="onnxruntime", calibration_batches=1,
                              threads=1))
    check_result(q)
    assert "int8" in q["method"] and q["dtype"] == "int8"
    # the share is of onnxruntime's own int8 GEMM (MatMulInteger), not of the fp32 rate
    assert q["gemm"]["dtype"] == "int8" and "MatMulInteger" in q["gemm"]["what"]
    assert q["gemm_fp32"]["dtype"] == "fp32" and q["pct_of_fp32_gemm"] > 0
    assert "cpu" in format_report(q)


def test_bench_frozen_alexnet_without_optimisations(capsys):
    rc = main(["bench", "--model", "fcn32s_alexnet", *TINY, "--freeze", "--no-optimize"])
    assert rc == 0
    assert "TorchScript freeze" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--model", "fcn8s_lite0", "--size", "big"], "expected HxW"),
    (["--model", "fcn8s_lite0", "--end-to-end", "--batch-size", "2"], "batch size 1"),
    (["--model", "fcn8s_lite0", "--end-to-end", "--batch", "2"], "batch size 1"),  # the deprecated spelling
    (["--model", "no_such_net"], "unknown model"),
    (["--model", "fcn8s_lite0", "--device", "cuda:7"], "cuda"),
    (["--model", "fcn8s_lite0", "--dtype", "fp16"], "fp16"),
    (["--model", "fcn8s_lite0", "--compile", "--freeze"], "alternatives"),
    (["--model", "fcn8s_lite0", "--repeats", "0"], "repeats"),
    (["--model", "fcn8s_lite0", "--gemm-size", "0"], "--gemm-size must be >= 1, got 0"),
    (["--model", "fcn8s_lite0", "--size", "100000x100000"], "GiB (estimate), but only"),
    (["--model", "fcn8s_lite0", "--json", "/dev/null/x.json"], "--json /dev/null/x.json"),
])
def test_bench_bad_input_exits_2(capsys, argv, needle):
    rc = main(["bench", *argv, "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_parse_size_and_gemm_rate():
    assert parse_size("360x480") == (360, 480) and parse_size("64") == (64, 64)
    import torch

    g = measure_gemm_rate(torch.device("cpu"), 64, repeats=2)
    with pytest.raises(UserError, match="size must be >= 1"):
        measure_gemm_rate(torch.device("cpu"), 0)
    with pytest.raises(UserError, match="gemm_size must be >= 1"):
        run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), gemm_size=0))
    with pytest.raises(UserError, match="--trace-size 'x'"):
        parse_size("x", "--trace-size")
    assert g["n"] == 64 and g["best_gflops"] >= g["median_gflops"] > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_gemm_rate_of_each_dtype(dtype):
    import torch

    g = measure_gemm_rate(torch.device("cpu"), 64, repeats=2, dtype=dtype)
    assert g["dtype"] == dtype and g["median_gflops"] > 0 and dtype in g["what"]


def test_bench_precision_auto_names_the_path_and_why(monkeypatch):
    """auto takes the device's first candidate (here: made-up CPUs) and says so in the report."""
    import fcnseg.runtime.choice as choice

    monkeypatch.setattr(choice.CpuFeatures, "detect", classmethod(lambda cls: cls(frozenset({"avx2"}))))
    r = run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), warmup=1, repeats=1, gemm_size=64,
                              num_classes=3, threads=1, dtype="auto"))
    assert r["dtype"] == "fp32" and "candidates none" in r["precision_choice"]
    assert "precision auto" in format_report(r)
    monkeypatch.setattr(choice.CpuFeatures, "detect",
                        classmethod(lambda cls: cls(frozenset({"avx2", "avx512f", "avx512_bf16"}))))
    r = run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), warmup=1, repeats=1, gemm_size=64,
                              num_classes=3, threads=1, dtype="auto"))
    # the faster of fp32 and bf16, measured on this machine, and both times are reported
    assert "avx512_bf16" in r["precision_choice"] and "measured here: fp32" in r["precision_choice"]
    assert r["dtype"] in ("fp32", "bf16") and r["precision_choice"].endswith("-> " + r["dtype"])
    assert ("bfloat16" in r["method"]) == (r["dtype"] == "bf16")
    assert r["gemm"]["dtype"] == r["dtype"] and r["gemm_fp32"]["dtype"] == "fp32"
    r = run_bench(BenchConfig(model="fcn32s_lite0", size=(32, 48), warmup=1, repeats=1, gemm_size=64,
                              num_classes=3, threads=1, freeze=True, optimize=False, dtype="auto"))
    assert "TorchScript freeze" in r["method"]
