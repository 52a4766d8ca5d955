"""precision="auto" measures fp32 against the device's candidates on the shipped samples and
keeps a lower precision only when it is faster and its labels agree; explicit precisions run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.errors import UserError
from fcnseg.inference import precision
from fcnseg.inference.precision import MIN_AGREEMENT, sample_images
from fcnseg.runtime import choice

MODEL = "camvid-fcn8s-lite0"


@pytest.fixture()
def auto(monkeypatch):
    """precision left to auto (conftest pins fp32), a fresh measurement, and a made-up CPU."""
    monkeypatch.delenv("FCNSEG_PRECISION", raising=False)
    monkeypatch.setattr(precision, "_CHOSEN", {})
    monkeypatch.setattr(choice, "_SAID", set())

    def fake_cpu(flags):
        monkeypatch.setattr(choice.CpuFeatures, "detect", classmethod(lambda cls: cls(frozenset(flags))))

    return fake_cpu


def agreement(a: fcnseg.inference.Segmenter, b: fcnseg.inference.Segmenter) -> float:
    return float(np.mean([(a.predict(im) == b.predict(im)).mean() for im in sample_images()]))


def test_auto_on_an_avx2_cpu_is_exact_fp32(auto, capsys):
    auto({"avx2", "fma"})
    m = fcnseg.load_model(MODEL, device="cpu")
    assert m._run.precision == "fp32"
    err = capsys.readouterr().err
    assert err.count("precision auto -> fp32") == 1 and "no AMX-bf16 / avx512_bf16" in err
    fcnseg.load_model(MODEL)
    assert "precision auto" not in capsys.readouterr().err  # printed once


def test_auto_on_a_bf16_cpu_measures_and_checks_agreement(auto, capsys):
    auto({"avx2", "avx512f", "avx512_bf16"})
    m = fcnseg.load_model(MODEL)
    err = capsys.readouterr().err
    assert "precision auto -> " in err and "bf16" in err and "label agreement" in err and "fp32" in err
    assert m._run.precision in ("fp32", "bf16")
    if m._run.precision == "bf16":  # taken: then it agrees with exact fp32 as the check says
        assert agreement(m, fcnseg.load_model(MODEL, precision="fp32")) >= MIN_AGREEMENT


def test_auto_refuses_a_path_that_fails_the_agreement_check(auto, monkeypatch, capsys):
    auto({"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(precision, "MIN_AGREEMENT", 1.01)  # nothing can pass
    m = fcnseg.load_model(MODEL)
    assert m._run.precision == "fp32"
    assert "< 101.0 %" in capsys.readouterr().err


def test_auto_keeps_untrained_architectures_fp32(auto, capsys):
    auto({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    with pytest.warns(fcnseg.inference.UntrainedModelWarning):
        m = fcnseg.load_model("fcn32s_lite0")
    assert m._run.precision == "fp32" and "untrained" in capsys.readouterr().err


def test_explicit_precisions(monkeypatch):
    ref = fcnseg.load_model(MODEL, precision="fp32")
    im = sample_images()[0]
    exact = ref.predict(im)
    np.testing.assert_array_equal(fcnseg.load_model(MODEL, optimize=False).predict(im), exact)
    bf16 = fcnseg.load_model(MODEL, precision="bf16")
    assert bf16._run.precision == "bf16" and (bf16.predict(im) == exact).mean() > 0.99
    int8 = fcnseg.load_model(MODEL, precision="int8")
    assert "int8" in int8._run.runner.steps[0] and (int8.predict(im) == exact).mean() > 0.98
    with pytest.raises(UserError, match="fp16 is for CUDA"):
        fcnseg.load_model(MODEL, precision="fp16")
    with pytest.raises(UserError, match="unknown precision"):
        fcnseg.load_model(MODEL, precision="fp64")


def test_auto_keeps_a_multi_input_net_fp32(auto, capsys):
    """An RGB-D net cannot segment the RGB samples the check uses: fp32, said so, no error."""
    from fcnseg.card import ModelCard
    from fcnseg.inference.info import ModelInfo
    from fcnseg.inference.precision import torch_backend
    from fcnseg.models import get_model, list_models

    name = "fcn8s_lite0_rgbd"
    assert name in list_models()
    auto({"avx2", "avx512f", "avx512_bf16"})
    net = get_model(name, 4).eval()
    info = ModelInfo("rgbd-test", ModelCard(model=name, num_classes=4, class_names=list("abcd"),
                                            palette=np.zeros((4, 3), int).tolist()))
    backend = torch_backend(net, info, torch.device("cpu"), "auto", make_segmenter=lambda b: None)
    assert backend.precision == "fp32" and "needs more inputs" in capsys.readouterr().err
