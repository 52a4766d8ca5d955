"""Convert Caffe weights (reference FCN or ImageNet classifier caffemodels) into fcnseg models.

Why strict: a silently skipped layer gives a model that runs and is wrong. Every
caffemodel layer with blobs must land in the model, every model parameter must come
from the caffemodel, and every blob must have the parameter's shape, or the whole
conversion fails with one message that names each offending layer.

The mapping is the model's own ``caffe_layer_names()`` (Caffe layer name -> module
path; blob 0 -> ``.weight``, blob 1 -> ``.bias``), so any architecture that declares
one converts, with nothing specific to it here. Caffe's Deconvolution weight layout
``(C_in, C_out / group, k, k)`` is PyTorch's ConvTranspose2d layout, and a Scale blob
``(C,)`` is fcnseg's ``Scale.weight``, so blobs are copied as they are.

ImageNet classifiers (ILSVRC VGG16, CaffeNet) are recognised by their InnerProduct
layers: fc6/fc7 are convolutionalised on the way (``4096 x 25088`` -> ``4096 x 512 x 7 x
7``; Caffe flattens ``C x H x W`` row-major, as ``reshape`` does), the classifier's
``fc8`` is dropped and the FCN head (``score*``, ``upscore*``, ``scale_*``) keeps
fcnseg's initialisation (zero scores, bilinear upsampling), as the reference surgery
does. Each of those is listed in the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..card import ModelCard
from ..errors import UserError
from ..models import get_model, model_spec
from ..preprocess import get_normalization
from ..weights import save_weights
from .caffemodel import Blob, CaffeLayer, read_caffemodel, write_caffemodel
from .net import Net, copy_blob

HEAD_PREFIXES = ("score", "upscore", "scale_")  # FCN head layers: absent from classifiers
CLASSIFIER_DROPPED = ("fc8",)  # the ImageNet classifier layer an FCN replaces
_MAX_LISTED = 12


def _fmt(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"


def _params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the module's weight and bias, in Caffe blob order."""
    out = []
    for role in ("weight", "bias"):
        value = getattr(module, role, None)
        if isinstance(value, torch.Tensor):
            out.append((role, value))
    return out


@dataclass
class ConversionReport:
    """What a conversion did: every layer is in exactly one list (or the conversion failed)."""

    caffemodel: str
    arch: str
    num_classes: int
    classifier: bool
    loaded: list[str] = field(default_factory=list)
    convolutionalized: list[str] = field(default_factory=list)  # "fc6: 4096x25088 -> 4096x512x7x7"
    dropped: list[str] = field(default_factory=list)  # classifier fc8
    kept_init: list[str] = field(default_factory=list)  # head layers at fcnseg's init (classifier)
    verified: float | None = None  # relative score difference to a reference prototxt, if checked

    def lines(self) -> list[str]:
        kind = "ImageNet classifier" if self.classifier else "FCN"
        out = [f"{self.caffemodel}: {kind} caffemodel -> {self.arch} ({self.num_classes} classes)",
               f"loaded {len(self.loaded)} layers: {', '.join(self.loaded)}"]
        if self.convolutionalized:
            out.append(f"convolutionalized: {'; '.join(self.convolutionalized)}")
        if self.dropped:
            out.append(f"dropped (classifier output layer): {', '.join(self.dropped)}")
        if self.kept_init:
            out.append(f"kept at fcnseg init (zero scores, bilinear upsampling): {', '.join(self.kept_init)}")
        if self.verified is not None:
            out.append(f"verified against the prototxt: relative score difference {self.verified:.2e}")
        return out


def _limited(items: list[str]) -> str:
    if len(items) <= _MAX_LISTED:
        return ", ".join(items)
    return ", ".join(items[:_MAX_LISTED]) + f", ... ({len(items)} in all)"


def _infer_num_classes(arch: str, layers: dict[str, CaffeLayer]) -> int:
    """The caffemodel's class count (rows of ``score_fr``), else the model's default."""
    score = layers.get("score_fr")
    if score is not None and score.blobs:
        return int(score.blobs[0].squeezed_shape()[0])
    return model_spec(arch).default_num_classes


def _build(arch: str, num_classes: int, need_init: bool) -> nn.Module:
    """Build the model; skip its random init when every parameter will be overwritten.

    A successful FCN conversion fills every parameter (anything uncovered is an error),
    so building on the meta device and allocating uninitialised storage saves the
    random init of ~134M values. A classifier conversion keeps the head's init.
    """
    if need_init:
        return get_model(arch, num_classes)
    with torch.device("meta"):
        model = get_model(arch, num_classes)
    if any(True for _ in model.buffers()):  # buffers are not caffemodel blobs: keep their init
        return get_model(arch, num_classes)
    return model.to_empty(device="cpu")


def convert_caffemodel(caffemodel: str | Path | Iterable[CaffeLayer], arch: str,
                       num_classes: int | None = None, *, name: str | None = None
                       ) -> tuple[nn.Module, ConversionReport]:
    """Build ``arch`` and fill it from a caffemodel; all problems raise one :class:`UserError`.

    ``num_classes`` defaults to the caffemodel's (``score_fr`` rows) or, for a
    classifier, to the model's default.
    """
    label = name or (str(caffemodel) if isinstance(caffemodel, (str, Path)) else "<caffemodel>")
    file_layers = read_caffemodel(caffemodel) if isinstance(caffemodel, (str, Path)) else list(caffemodel)
    layers: dict[str, CaffeLayer] = {}
    errors: list[str] = []
    for layer in file_layers:
        if not layer.blobs:
            continue
        if layer.name in layers:
            errors.append(f"layer {layer.name!r} occurs twice with blobs")
        layers[layer.name] = layer
    classifier = any(layer.type == "InnerProduct" for layer in layers.values())
    n = _infer_num_classes(arch, layers) if num_classes is None else int(num_classes)
    model = _build(arch, n, need_init=classifier)
    mapping_fn = getattr(model, "caffe_layer_names", None)
    if mapping_fn is None:
        raise UserError(f"model {arch!r} has no Caffe layer mapping (caffe_layer_names); it cannot be "
                        f"converted from a caffemodel")
    mapping: dict[str, str] = dict(mapping_fn())
    modules = dict(model.named_modules())
    report = ConversionReport(label, arch, n, classifier)
    for caffe_name, path in mapping.items():
        if path not in modules:
            raise AssertionError(f"{arch}.caffe_layer_names() maps {caffe_name!r} to missing module {path!r}")

    planned: list[tuple[torch.Tensor, Blob, str]] = []
    for caffe_name, layer in layers.items():
        if caffe_name not in mapping:
            if classifier and caffe_name in CLASSIFIER_DROPPED:
                report.dropped.append(caffe_name)
            else:
                errors.append(f"caffemodel layer {caffe_name!r} ({layer.type}, blobs "
                              f"{', '.join(_fmt(b.shape) for b in layer.blobs)}) has no counterpart in {arch}")
            continue
        path = mapping[caffe_name]
        targets = _params(modules[path])
        if len(layer.blobs) != len(targets):
            errors.append(f"layer {caffe_name!r} has {len(layer.blobs)} blob(s), {arch} {path} has "
                          f"{len(targets)} ({', '.join(r for r, _ in targets)})")
            continue
        ok = True
        for i, (blob, (role, tensor)) in enumerate(zip(layer.blobs, targets)):
            target = tuple(tensor.shape)
            if blob.fits(target):
                planned.append((tensor, blob, caffe_name))
                continue
            src = blob.squeezed_shape()
            if (layer.type == "InnerProduct" and i == 0 and len(src) == 2 and len(target) == 4
                    and src[0] == target[0] and src[1] == int(np.prod(target[1:]))):
                planned.append((tensor, blob, caffe_name))
                report.convolutionalized.append(f"{caffe_name}: {_fmt(src)} -> {_fmt(target)}")
                continue
            errors.append(f"layer {caffe_name!r}: blob {i} ({role}) has shape {_fmt(blob.shape)}, "
                          f"{arch} {path}.{role} expects {_fmt(target)}")
            ok = False
        if ok:
            report.loaded.append(caffe_name)

    missing = [c for c in mapping if c not in layers and _params(modules[mapping[c]])]
    for caffe_name in missing:
        if classifier and caffe_name.startswith(HEAD_PREFIXES):
            report.kept_init.append(caffe_name)
    absent = [c for c in missing if c not in report.kept_init]
    if absent:
        errors.append(f"{arch} layers missing from the caffemodel: {_limited(absent)}")
    covered = {f"{mapping[c]}.{role}" for c in mapping for role, _ in _params(modules[mapping[c]])}
    uncovered = [k for k in model.state_dict() if k not in covered]
    if uncovered:
        errors.append(f"{arch} parameters with no Caffe layer: {_limited(uncovered)}")
    if errors:
        hint = ""
        if num_classes is not None and "score_fr" in layers:
            hint = f" (the caffemodel has {_infer_num_classes(arch, layers)} classes)"
        raise UserError(f"{label}: does not fit {arch}{hint}: {len(errors)} problem(s): " + "; ".join(errors))
    for tensor, blob, _ in planned:
        copy_blob(tensor, blob)
    return model, report


def conversion_card(model: nn.Module, report: ConversionReport, normalization: str | None = None,
                    class_names: list[str] | None = None, input_key: str = "image") -> ModelCard:
    """The converted model's card: the Caffe preprocessing goes with Caffe weights; the Caffe
    source is recorded as its provenance. ``input_key``: the sample the net reads (``hha`` for
    the reference NYUD HHA net, whose 3-channel input is an HHA image, not RGB)."""
    norm = get_normalization(normalization or getattr(model, "normalization", "caffe"))
    if class_names is not None and len(class_names) != report.num_classes:
        raise UserError(f"{len(class_names)} class names for {report.num_classes} classes")
    return ModelCard.for_net(
        model, model=report.arch, num_classes=report.num_classes, normalization=norm.name, trained=True,
        class_names=list(class_names or []), options={}, input_key=input_key,
        provenance={
            "preprocessing": {"channel_order": "BGR" if norm.bgr else "RGB",
                              "pixel_range": "0..255" if norm.scale == 1 else f"0..{255 * norm.scale:g}",
                              "mean": list(norm.mean), "std": list(norm.std)},
            "source": {"format": "caffemodel", "file": Path(report.caffemodel).name,
                       "kind": "classifier" if report.classifier else "fcn",
                       "convolutionalized": report.convolutionalized, "dropped": report.dropped,
                       "kept_init": report.kept_init}})


VERIFY_TOLERANCE = 1e-4


def convert_to_file(caffemodel: str | Path, arch: str, out: str | Path, num_classes: int | None = None, *,
                    normalization: str | None = None, class_names: list[str] | None = None,
                    verify: str | Path | None = None, input_key: str = "image") -> ConversionReport:
    """Convert and write an fcnseg weights file (safetensors + metadata).

    With ``verify`` (a net prototxt), the converted model must reproduce that net's
    scores on a random input (relative difference <= 1e-4) before anything is written.
    """
    model, report = convert_caffemodel(caffemodel, arch, num_classes)
    card = conversion_card(model, report, normalization, class_names, input_key)
    if verify is not None:
        report.verified = verify_against_prototxt(model, verify, caffemodel)
        if report.verified > VERIFY_TOLERANCE:
            raise UserError(f"{caffemodel}: the converted {arch} differs from {verify} by {report.verified:.2e} "
                            f"(relative); expected <= {VERIFY_TOLERANCE:g}")
        card.provenance["source"]["verified_against"] = Path(verify).name
    save_weights(model.state_dict(), out, card.to_meta())
    return report


def verify_against_prototxt(model: nn.Module, prototxt: str | Path, caffemodel: str | Path, *,
                            size: tuple[int, int] = (67, 93), seed: int = 0) -> float:
    """Run the reference definition (``Net(prototxt, caffemodel)``) and ``model`` on one
    random input; return the relative difference of their scores (max |a - b| / max |b|).

    This lets a user check a conversion of real weights against the reference prototxt.
    Single-input, single-output nets only.
    """
    net = Net(prototxt, caffemodel).eval()
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        raise UserError(f"{prototxt}: verification needs a net with one input and one output, this one has "
                        f"inputs {net.inputs} and outputs {net.outputs}")
    channels = net.channels.get(net.inputs[0]) or 3
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *size, generator=gen) * 50
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref, ours = net(x), model(x)
    finally:
        model.train(was_training)
    if not isinstance(ours, torch.Tensor) or not isinstance(ref, torch.Tensor) or ours.shape != ref.shape:
        got = tuple(ours.shape) if isinstance(ours, torch.Tensor) else type(ours).__name__
        raise UserError(f"{prototxt}: the net outputs {tuple(ref.shape)}, the model {got}; cannot compare")
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------- the way back
def _caffe_type(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose2d):
        return "Deconvolution"
    if isinstance(module, nn.Conv2d):
        return "Convolution"
    if isinstance(module, nn.Linear):
        return "InnerProduct"
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:
        return "Scale"
    raise ValueError(f"no Caffe layer type for {module.__class__.__name__}")


def model_to_caffe(model: nn.Module) -> dict[str, tuple[str, list[np.ndarray]]]:
    """``{caffe layer name: (type, [blobs])}`` of a model, through its ``caffe_layer_names()``."""
    modules = dict(model.named_modules())
    out: dict[str, tuple[str, list[np.ndarray]]] = {}
    for caffe_name, path in model.caffe_layer_names().items():
        module = modules[path]
        blobs = [t.detach().cpu().float().numpy() for _, t in _params(module)]
        if blobs:
            out[caffe_name] = (_caffe_type(module), blobs)
    return out


def export_caffemodel(model: nn.Module, path: str | Path) -> Path:
    """Write a model's weights as a caffemodel with the reference layer names."""
    return write_caffemodel(path, model_to_caffe(model), name=getattr(model, "model_name", None))
