"""One suite over the model registry: every registered model, by its capability flags.

As segmentation_models_pytorch's model tester does, the tests are parametrised over
``list_models()``, so a newly registered model is tested without anyone adding it to a
list. Each :class:`~fcnseg.models.registry.ModelSpec` declares what the model can do
(``trains``, ``exports_onnx``, ``two_heads``, ``multi_input``) and the suite checks the
declaration against the built net and then exercises it. Shapes, heads, inputs and
gradients run on the meta device (no memory, no arithmetic: cheap for VGG16 nets); real
forwards, the fast path and ONNX export run for nets up to ``SMALL`` parameters here and
for the big ones under ``-m slow``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.card import ModelCard
from fcnseg.models import get_model, list_models, model_spec

SMALL = 15_000_000  # parameters; larger nets get their real-arithmetic checks under -m slow
SIZES = [(1, 1), (17, 3), (45, 64), (101, 77)]


def meta_net(name: str) -> nn.Module:
    with torch.device("meta"):
        return get_model(name)


def n_params(name: str) -> int:
    return sum(p.numel() for p in meta_net(name).parameters())


def inputs(net: nn.Module, n: int, h: int, w: int, device: str = "meta") -> torch.Tensor | dict:
    mods = getattr(net, "modalities", None)
    if mods:
        return {m: torch.randn(n, c, h, w, device=device) for m, c in mods.items()}
    from fcnseg.complexity import input_channels

    return torch.randn(n, input_channels(net), h, w, device=device)


def heads_of(out) -> dict[str, torch.Tensor]:
    return dict(out) if isinstance(out, dict) else {"": out}


def real_params(name: str):
    """``name`` as a real-arithmetic check: fast for small nets, under -m slow for big ones."""
    return pytest.param(name, marks=[pytest.mark.slow] if n_params(name) > SMALL else [])


ALL = list_models()
REAL = [real_params(n) for n in ALL]


@pytest.mark.parametrize("name", ALL)
def test_flags_match_the_built_net(name):
    spec = model_spec(name)
    net = meta_net(name)
    assert net.num_classes == spec.default_num_classes
    heads = getattr(net, "head_classes", None) or {}
    assert spec.two_heads == (len(heads) == 2), name
    assert spec.multi_input == bool(getattr(net, "modalities", None)), name
    card = ModelCard.for_net(net, model=name)
    assert card.multi_input == spec.multi_input and len(card.heads) == len(heads)
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("name", ALL)
def test_output_size_equals_input_size_on_meta(name):
    net = meta_net(name).eval()
    heads = getattr(net, "head_classes", None) or {"": net.num_classes}
    for h, w in SIZES:
        out = heads_of(net(inputs(net, 2, h, w)))
        assert set(out) == set(heads), name
        for head, scores in out.items():
            assert tuple(scores.shape) == (2, heads[head], h, w), (name, head, h, w)


@pytest.mark.parametrize("name", [n for n in ALL if model_spec(n).trains])
def test_every_parameter_gets_a_gradient(name):
    net = meta_net(name).train()
    out = heads_of(net(inputs(net, 2, 37, 29)))
    loss = sum(F.cross_entropy(s, torch.zeros(2, 37, 29, dtype=torch.long, device="meta"), ignore_index=255)
               for s in out.values())
    loss.backward()
    missing = [k for k, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:3]}"


@pytest.mark.parametrize("name", REAL)
def test_real_forward_and_the_fast_path(name):
    from conftest import randomise_
    from fcnseg.runtime.fast import optimize_for_inference

    torch.manual_seed(0)
    net = randomise_(get_model(name))
    x = inputs(net, 2, 33, 47, device="cpu")
    with torch.no_grad():
        ref = heads_of(net(x))
        fast = heads_of(optimize_for_inference(net, mode="eager", channels_last=False)(x))
    for head, scores in ref.items():
        assert torch.isfinite(scores).all() and scores.shape[2:] == (33, 47)
        scale = float(scores.abs().max()) or 1.0
        assert float((fast[head] - scores).abs().max()) / scale <= 1e-4, (name, head)


@pytest.mark.parametrize("name", [p for p in REAL if model_spec(p.values[0]).exports_onnx])
def test_onnx_export_runs_at_other_sizes(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import randomise_
    from fcnseg.runtime.export import export_model

    net = randomise_(get_model(name))  # multi-input nets export their channel-concatenated form
    card = ModelCard.for_net(net, model=name)
    result = export_model(net, tmp_path / "m.onnx", "onnx", card=card, example_size=(40, 40),
                          check_sizes=((1, 45, 31),))
    assert max(result.checks.values()) <= 1e-4
