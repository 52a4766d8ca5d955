"""``load_model(name_or_path)``: from a name or a file to a ready :class:`Segmenter`.

Resolution order:

1. a shipped model name: ``fcnseg/weights/<name>.safetensors`` inside the package;
2. a registered architecture (``fcnseg.models.list_models()``): an *untrained* net
   (an :class:`UntrainedModelWarning` says so; its predictions mean nothing);
3. a ``.safetensors`` file written by fcnseg (its metadata names the model, classes,
   palette, normalisation and build options);
4. a training checkpoint ``.pt``/``.pth``/``.ckpt`` of ``fcnseg train``, read and verified by
   :func:`fcnseg.training.checkpoint.load_checkpoint` (``torch.load(weights_only=True)``
   inside, so a malicious pickle cannot run code); the model is described by its
   ``meta`` entry, or by its ``config`` where there is no ``meta``;
5. an ``.onnx`` file from ``fcnseg export``, run by onnxruntime.

Every mistake (missing file, wrong format, weights that do not fit the model, a
class count that differs from the one asked for) is a one-line :class:`UserError`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..card import ModelCard
from ..errors import UserError
from ..shipped import DEFAULT_MODEL, list_shipped_models, shipped_weights_path
from .info import ModelInfo
from .predictor import Segmenter

__all__ = ["DEFAULT_MODEL", "ModelInfo", "UntrainedModelWarning", "load_model", "load_net",
           "list_shipped_models", "shipped_weights_path"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
#: build options that only matter for training and must not be replayed at inference
_TRAINING_ONLY_OPTIONS = ("pretrained_backbone",)


class UntrainedModelWarning(UserWarning):
    """A model was built without trained weights."""


# --------------------------------------------------------------------------- metadata -> card
def _info_from_meta(meta: dict[str, Any], *, name: str, source: str, num_classes: int | None,
                    inferred_classes: int | None = None) -> ModelInfo:
    card = ModelCard.from_meta(meta, source=source, num_classes=num_classes, inferred_classes=inferred_classes)
    return ModelInfo(name=name, card=card, source=source)


def _build(info: ModelInfo) -> nn.Module:
    from ..models import get_model, list_models

    if not info.model:
        raise UserError(f"{info.source}: its metadata does not name the model architecture")
    if info.model not in list_models():
        raise UserError(f"{info.source}: model {info.model!r} is not known to this fcnseg "
                        f"(known: {', '.join(list_models())})")
    opts = {k: v for k, v in info.options.items() if k not in _TRAINING_ONLY_OPTIONS}
    return get_model(info.model, info.num_classes, **opts)


def _fit(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``, or say in one line what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) of the wrong shape, e.g. {k} "
                         f"{tuple(state[k].shape)} vs {tuple(own[k].shape)} expected")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise UserError(f"{source}: weights do not fit model {getattr(net, 'model_name', '?')}: "
                        + "; ".join(parts))
    from ..weights import check_finite

    check_finite(state, source)
    net.load_state_dict(state, strict=True)


def _classes_in_state(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("score_fr.weight")
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# --------------------------------------------------------------------------- the five sources
def _from_safetensors(path: Path, name: str, num_classes: int | None) -> tuple[nn.Module, ModelInfo]:
    from ..weights import load_weights

    state, meta = load_weights(path)
    if not meta:
        raise UserError(f"{path}: safetensors file without fcnseg metadata; cannot tell which model it "
                        "is (fcnseg writes it with fcnseg.weights.save_weights)")
    return _from_state(state, meta, path, name, num_classes)


def _from_state(state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path, name: str,
                num_classes: int | None) -> tuple[nn.Module, ModelInfo]:
    """Weights + metadata (from either file kind) -> the built net with its weights, and its info."""
    info = _info_from_meta(meta, name=name, source=str(path), num_classes=num_classes,
                           inferred_classes=_classes_in_state(state))
    net = _build(info)
    _fit(net, state, str(path))
    return net, info


def _checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model's metadata: the checkpoint's ``meta`` (a model card, written by ``fcnseg train``),
    or, in older checkpoints, a flat dict completed from its ``config`` (hand-made ones have
    only the config)."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    meta = dict(ckpt["meta"]) if isinstance(ckpt.get("meta"), dict) else {}
    if meta.get("card_version") is not None:
        return meta
    fallback = {
        "model": config.get("model"),
        "num_classes": config.get("num_classes"),
        "class_names": config.get("class_names"),
        "palette": config.get("palette"),
        "normalization": config.get("normalization"),
        "options": config.get("model_options") or config.get("options"),
        "dataset": config.get("dataset"),
        "input_key": config.get("input_key"),
    }
    for k, v in fallback.items():
        if meta.get(k) is None and v is not None:
            meta[k] = v
    meta = {k: v for k, v in meta.items() if v is not None}
    if isinstance(meta.get("model"), dict):  # a nested model section: {"name": ..., ...}
        meta["model"] = meta["model"].get("name")
    return meta


def _from_checkpoint(path: Path, name: str, num_classes: int | None) -> tuple[nn.Module, ModelInfo]:
    from ..training.checkpoint import load_checkpoint, served_weights

    ckpt = load_checkpoint(path)  # verified: a damaged or foreign file is a one-line UserError
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: fcnseg checkpoint without a 'model' entry")
    state = served_weights(ckpt)
    if not isinstance(state, dict):
        raise UserError(f"{path}: checkpoint's 'model' entry is not a state dict")
    meta = _checkpoint_meta(ckpt)
    if not meta.get("model"):
        raise UserError(f"{path}: checkpoint records neither 'meta' nor 'config' naming its model")
    state = _strip_prefixes(state)
    state = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}
    return _from_state(state, meta, path, name, num_classes)


def _from_registry(model: str, num_classes: int | None) -> tuple[nn.Module, ModelInfo]:
    from ..models import get_model, model_spec

    n = model_spec(model).default_num_classes if num_classes is None else int(num_classes)
    net = get_model(model, n)
    return net, ModelInfo(name=model, card=ModelCard.for_net(net, model=model, trained=False),
                          source=f"registered model {model}")


def _onnx_info(backend, path: Path, name: str, num_classes: int | None) -> ModelInfo:
    meta: dict[str, Any] = backend.meta
    if not meta.get("normalization") and not meta.get("card_version"):
        warnings.warn(f"{path}: ONNX file carries no fcnseg metadata; assuming 'imagenet' normalisation "
                      "and generic class names", UserWarning, stacklevel=3)
    return _info_from_meta(meta, name=name, source=str(path), num_classes=num_classes,
                           inferred_classes=backend.num_classes)


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", num_classes: int | None = None,
               backend: str | None = None, tile: int | str | None = "auto", overlap: int | None = None,
               tta: Any = None, optimize: bool = True, precision: str | None = None):
    """Load a segmentation model ready for :meth:`~fcnseg.inference.Segmenter.predict`.

    Args:
        name_or_path: a shipped model name (``camvid-fcn8s-lite0``), a registered
            architecture (untrained!), or a ``.safetensors`` / ``.pt`` / ``.onnx`` file.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        num_classes: the class count you expect; a different one in the weights is an error.
            For a registered architecture it sets the size of the (untrained) output.
        backend: ``torch`` or ``onnxruntime`` (default: onnxruntime for ``.onnx``, else torch).
        tile, overlap, tta: defaults for :meth:`Segmenter.predict` (see there).
        optimize: run the torch backend through :func:`fcnseg.runtime.fast.optimize_for_inference`
            (BatchNorm folded, depthwise upsampling, channels-last; same logits within float
            rounding). ``False`` runs the plain eager module.
        precision: ``auto`` (the default, or ``$FCNSEG_PRECISION`` when set: the fastest precision
            this machine runs well whose labels agree with fp32 on >= 99.5 % of the shipped
            sample pixels, measured once here and printed; see :mod:`fcnseg.inference.precision`),
            ``fp32`` (exact), ``bf16``, ``fp16`` (CUDA) or ``int8`` (CPU, calibrated on the shipped CamVid samples).
        device: also ``auto`` (CUDA when present).

    On the CPU this sets the process's glibc malloc to reuse freed memory
    (:func:`fcnseg.runtime.allocator.keep_freed_memory`; ``FCNSEG_MALLOC=system`` opts out).
    """
    from ..models import list_models
    from ..runtime.backends import OnnxBackend, TorchBackend, resolve_device

    if backend not in (None, "torch", "onnxruntime"):
        raise UserError(f"unknown backend {backend!r}; expected torch or onnxruntime")
    if num_classes is not None and int(num_classes) < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    from ..runtime.choice import PRECISIONS, default_precision, resolve_device_name

    precision = default_precision(precision)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    dev = resolve_device(resolve_device_name(device))
    if dev.type == "cpu":
        from ..runtime.allocator import keep_freed_memory

        keep_freed_memory()  # page faults cost a third to a half of CPU inference otherwise
    text = str(name_or_path)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    looks_like_path = suffix in (".safetensors", ".onnx") + CHECKPOINT_SUFFIXES or "/" in text or "\\" in text

    if suffix == ".onnx" or (backend == "onnxruntime" and path.is_file()):
        if backend == "torch":
            raise UserError(f"{path}: an ONNX file runs with backend onnxruntime, not torch")
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX file")
        if suffix != ".onnx":
            raise UserError(f"{path}: backend onnxruntime needs an .onnx file (make one with fcnseg export)")
        if precision not in ("auto", "fp32"):
            raise UserError(f"{path}: an ONNX file runs in the precision it was exported in; "
                            f"precision {precision!r} applies to PyTorch models")
        be = OnnxBackend(path, dev)
        info = _onnx_info(be, path, path.stem, num_classes)
        return Segmenter(be, info, geometry_net=_geometry_net(info), tile=tile, overlap=overlap, tta=tta)
    if backend == "onnxruntime":
        raise UserError(f"{text}: backend onnxruntime needs an .onnx file (make one with fcnseg export)")

    if path.is_file() or looks_like_path:
        if not path.exists():
            raise UserError(f"{path}: no such model file")
        if path.is_dir():
            raise UserError(f"{path}: is a folder; expected a .safetensors, .pt or .onnx model file")
        if suffix == ".safetensors":
            net, info = _from_safetensors(path, path.stem, num_classes)
        elif suffix in CHECKPOINT_SUFFIXES:
            from .torchscript import TorchScriptBackend, is_torchscript_archive

            if is_torchscript_archive(path):  # `fcnseg export --format torchscript` also writes .pt
                if precision not in ("auto", "fp32"):
                    raise UserError(f"{path}: a TorchScript archive runs in the precision it was exported in; "
                                    f"precision {precision!r} applies to PyTorch models")
                ts = TorchScriptBackend(path, dev)
                info = _info_from_meta(ts.meta, name=path.stem, source=str(path), num_classes=num_classes)
                return Segmenter(ts, info, geometry_net=_geometry_net(info), tile=tile, overlap=overlap, tta=tta)
            net, info = _from_checkpoint(path, path.stem, num_classes)
        else:
            raise UserError(f"{path}: unknown model file type {suffix or '(none)'}; expected .safetensors, "
                            ".pt (training checkpoint) or .onnx")
    elif shipped_weights_path(text).is_file():
        net, info = _from_safetensors(shipped_weights_path(text), text, num_classes)
    elif text in list_models():
        net, info = _from_registry(text, num_classes)
        warnings.warn(f"model {text!r} is an untrained architecture (no weights loaded): its predictions "
                      "are meaningless; pass a shipped model name or a weights file", UntrainedModelWarning,
                      stacklevel=2)
    else:
        shipped = list_shipped_models()
        raise UserError(f"unknown model {text!r}: not a file, a shipped model "
                        f"({', '.join(shipped) or 'none installed'}) or an architecture "
                        f"({', '.join(list_models())})")
    from .precision import torch_backend

    def make(backend_: TorchBackend) -> Segmenter:
        return Segmenter(backend_, info, geometry_net=net, tile=tile, overlap=overlap, tta=tta)

    return make(torch_backend(net, info, dev, precision, optimize=optimize, make_segmenter=make))


def _geometry_net(info: ModelInfo) -> nn.Module | None:
    """A weightless ('meta' device) copy of the architecture, to know its tiling geometry."""
    from ..models import list_models

    if not info.model or info.model not in list_models():
        return None
    try:
        with torch.device("meta"):
            return _build(info)
    except Exception:  # geometry is an optimisation for tiling; never fail loading over it
        return None


def load_net(name_or_path: str | Path, *, num_classes: int | None = None, device: str | torch.device = "cpu",
             purpose: str = "this", precision: str = "fp32") -> tuple[nn.Module, ModelCard]:
    """A name or weights file -> ``(eval-mode nn.Module, its ModelCard)``: the one way export,
    bench and eval turn what the user typed into a PyTorch network and its description.

    It defers to :func:`load_model` (shipped names, registered architectures, ``.safetensors``
    and training checkpoints), so every source ``predict`` accepts works here too. ONNX files
    hold no PyTorch module and are refused (``purpose`` names the job in that message).
    ``precision`` ``fp32`` (the default) gives the plain module as built; another precision
    (``auto``, ``bf16``, ``fp16``, ``int8``; see :func:`load_model`) gives the module that runs
    the net in it (fp32 inputs and outputs), e.g. for ``fcnseg eval --precision``.
    """
    text = str(name_or_path)
    if text.lower().endswith(".onnx"):
        raise UserError(f"{text}: an ONNX file holds no PyTorch network for {purpose}; give a model name or a "
                        ".safetensors / .pt weights file")
    exact = precision == "fp32"
    segmenter = load_model(text, device=device, num_classes=num_classes, optimize=not exact, precision=precision)
    if segmenter.net is None:  # pragma: no cover - load_model returns a torch net for every non-ONNX source
        raise UserError(f"{text}: no PyTorch network behind this model")
    net = segmenter.net if exact else segmenter._run.runner  # another precision: the module that runs it
    return net.eval(), segmenter.info.card
