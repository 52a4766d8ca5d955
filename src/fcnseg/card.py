"""The model card: one typed, versioned description of a model, written once and read everywhere.

What a net is (architecture and build options), what it predicts (classes, palette,
heads) and what it must be fed (one :class:`InputSpec` per input: the sample key that
feeds it, its channels and its preprocessing) used to be spelled out in four places
that drifted apart (the NYUD HHA net was trained and scored on RGB). A
:class:`ModelCard` travels with the weights instead, as torchvision's ``Weights``
carry their transforms: training writes it into checkpoints and weights files,
``load_model``, ``evaluate``, ``predict``, ``export`` (ONNX metadata),
``fcnseg convert`` and ``bench`` read it, and :func:`model_inputs` is the one
function that turns samples into the net's input tensors.

Serialised form: the weights file's ``fcnseg`` metadata is the card's JSON object
(``card_version`` says which layout), plus the flat ``normalization`` / ``input_key``
keys older fcnseg versions read. :meth:`ModelCard.from_meta` also reads every
metadata dict fcnseg wrote before cards existed (no ``card_version``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .data.nyud import MEAN_HHA, MEAN_LOGD
from .errors import UserError

__all__ = ["CARD_VERSION", "InputSpec", "HeadSpec", "ModelCard", "default_inputs", "model_inputs",
           "REFERENCE_HHA_MEAN", "REFERENCE_DEPTH_LOG_MEAN"]

#: the layout of :meth:`ModelCard.to_dict`; bump it when a field changes meaning or a reader that
#: ignores a new field would run the model wrongly (2: ``input_scale``)
CARD_VERSION = 2

#: the reference NYUD nets' HHA mean (HHA PNG channel order) and log-depth mean (nyud_layers.py)
REFERENCE_HHA_MEAN = MEAN_HHA
REFERENCE_DEPTH_LOG_MEAN = MEAN_LOGD

#: sample keys whose preprocessing is a normalisation preset, an HHA mean, a log-depth mean
_KEYS = ("image", "hha", "depth")


@dataclass
class InputSpec:
    """One input of the net: which sample key feeds it and how it is preprocessed.

    ``name`` is the net's name for it: ``image`` for a one-input net, else the
    modality key of its input dict (``rgb``, ``depth``, ``hha``). ``key`` is the sample
    key read from a data set (``image``, ``depth``, ``hha``). Preprocessing:
    ``image`` uses the ``normalization`` preset; ``hha`` subtracts ``hha_mean`` (or
    nothing); ``depth`` (metres) becomes ``log(mm) - depth_log_mean``, or stays in metres
    when ``depth_log_mean`` is None (as nets trained before the card was written).
    """

    name: str = "image"
    key: str = "image"
    channels: int = 3
    normalization: str | None = None
    hha_mean: tuple[float, ...] | None = None
    depth_log_mean: float | None = None

    def __post_init__(self) -> None:
        if self.key not in _KEYS:
            raise UserError(f"input {self.name!r}: unknown sample key {self.key!r}; expected one of {', '.join(_KEYS)}")
        if self.key == "image":
            from .preprocess import get_normalization

            self.normalization = get_normalization(self.normalization or "imagenet").name
        if self.hha_mean is not None:
            self.hha_mean = tuple(float(v) for v in self.hha_mean)
            if len(self.hha_mean) != 3:
                raise UserError(f"input {self.name!r}: hha_mean needs 3 values, got {len(self.hha_mean)}")
        if self.depth_log_mean is not None:
            self.depth_log_mean = float(self.depth_log_mean)

    def prepare(self, array: np.ndarray) -> Tensor:
        """One sample's array (``H x W x 3`` uint8 image/HHA, ``H x W`` float depth in metres)
        -> the float32 ``C x H x W`` tensor this input expects."""
        from .preprocess import normalize, normalize_depth, normalize_hha

        if self.key == "image":
            return normalize(array, self.normalization or "imagenet")
        if self.key == "hha":
            return normalize_hha(array, self.hha_mean)
        return normalize_depth(array, self.depth_log_mean)


@dataclass
class HeadSpec:
    """An output head of a multi-task net (SIFT Flow: ``sem`` and ``geo``)."""

    num_classes: int
    class_names: list[str] = field(default_factory=list)


@dataclass
class ModelCard:
    """Everything needed to rebuild, feed and read a model, beside its weights."""

    model: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    inputs: list[InputSpec] = field(default_factory=lambda: [InputSpec()])
    options: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, HeadSpec] = field(default_factory=dict)
    main_head: str | None = None
    dataset: str | None = None
    trained: bool = True
    #: free-form: training run, step, validation scores, conversion source, dtype, ...
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the net sees every image resized by this factor (its scores are resized back): a net trained
    #: on enlarged images (``scale_range`` around it) is run at the scale it learned; applied by
    #: ``predict``, ``eval`` and training's validation, on top of any test-time scales
    input_scale: float = 1.0
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        n = int(self.num_classes)
        self.num_classes = n
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(n)]
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_names) != n:
            raise UserError(f"{len(self.class_names)} class names for {n} classes")
        from .viz import default_palette

        default = default_palette(n, self.class_names)
        try:
            pal = np.asarray(self.palette if len(self.palette) else np.zeros((0, 3)), dtype=np.int64).reshape(-1, 3)
        except (TypeError, ValueError):
            raise UserError("palette is not a list of [r, g, b]") from None
        if pal.size and (pal.min() < 0 or pal.max() > 255):
            raise UserError("palette colours must be 0..255")
        if len(pal) < n:
            pal = np.concatenate([pal, default[len(pal):n].astype(np.int64)])
        self.palette = pal.astype(int).tolist()
        if not self.inputs:
            raise UserError(f"model {self.model}: a card needs at least one input")
        try:
            self.input_scale = float(self.input_scale)
        except (TypeError, ValueError):
            raise UserError(f"model {self.model}: input_scale {self.input_scale!r} is not a number") from None
        if not (0.125 <= self.input_scale <= 8):
            raise UserError(f"model {self.model}: input_scale {self.input_scale!r} out of range: expected 0.125..8")
        self.inputs = [i if isinstance(i, InputSpec) else InputSpec(**i) for i in self.inputs]
        self.heads = {h: s if isinstance(s, HeadSpec) else HeadSpec(**s) for h, s in self.heads.items()}
        for h, s in self.heads.items():
            if h == self.main_head and s.num_classes == n:
                s.class_names = list(self.class_names)
            if not s.class_names or len(s.class_names) != s.num_classes:
                s.class_names = [f"{h}_{i}" for i in range(s.num_classes)]

    # ------------------------------------------------------------------ views
    @property
    def normalization(self) -> str:
        """The image input's preset (the one an RGB picture is normalised with)."""
        for spec in self.inputs:
            if spec.key == "image":
                return spec.normalization or "imagenet"
        return "imagenet"

    @property
    def multi_input(self) -> bool:
        """True when the net takes a dict of modalities (RGB-D, RGB + HHA)."""
        return len(self.inputs) > 1 or self.inputs[0].name != "image"

    @property
    def sample_keys(self) -> list[str]:
        """The data-set keys the net reads (``modalities`` of an NYUD data set)."""
        return [s.key for s in self.inputs]

    def dataset_options(self, dataset: str) -> dict[str, Any]:
        """Data-set options the net's inputs need: the modalities it reads (NYUD: image, depth, hha)."""
        keys = self.sample_keys
        if keys == ["image"]:
            return {}
        import inspect

        from .data import dataset_class

        if "modalities" not in inspect.signature(dataset_class(dataset).__init__).parameters:
            raise UserError(f"model {self.model} reads {' + '.join(s.name for s in self.inputs)} but the {dataset} "
                            "data set gives RGB "
                            "images only; use a data set with those inputs (nyud)")
        return {"modalities": tuple(keys)}

    @property
    def palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    def preprocessing(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~fcnseg.data.transforms.train_transforms` /
        :func:`~fcnseg.data.transforms.eval_transforms` / ``Normalize`` for these inputs."""
        return {"hha_mean": next((s.hha_mean for s in self.inputs if s.key == "hha"), None),
                "depth_log_mean": next((s.depth_log_mean for s in self.inputs if s.key == "depth"), None)}

    def transform(self) -> Any:
        """The evaluation transform that turns a data-set sample into tensors as this net expects."""
        from .data.transforms import eval_transforms

        return eval_transforms(self.normalization, **self.preprocessing())

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inputs"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in i.items()} for i in data["inputs"]]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_meta(self) -> dict[str, Any]:
        """The metadata dict written into weights files, checkpoints and exported models: the
        card, plus the flat keys fcnseg read before cards (``normalization``, ``input_key``,
        ``head_class_names``), so older readers still preprocess correctly."""
        data = self.to_dict()
        data["normalization"] = self.normalization
        data["input_key"] = self.inputs[0].key if not self.multi_input else None
        if self.heads:
            data["head_classes"] = {h: s.num_classes for h, s in self.heads.items()}
            data["head_class_names"] = {h: list(s.class_names) for h, s in self.heads.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> "ModelCard":
        version = data.get("card_version")
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise UserError(f"{source}: card_version {version!r} is not a number") from None
        if version > CARD_VERSION:
            raise UserError(f"{source}: model card version {version} is newer than this fcnseg reads "
                            f"({CARD_VERSION}); upgrade fcnseg")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            kwargs["inputs"] = [InputSpec(**dict(i)) for i in data.get("inputs") or [{}]]
            kwargs["heads"] = {h: HeadSpec(**dict(s)) for h, s in (data.get("heads") or {}).items()}
            return cls(**kwargs)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: malformed model card ({exc})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}: model card is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{source}: model card is not a JSON object")
        return cls.from_dict(data, source)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, source: str, num_classes: int | None = None,
                  inferred_classes: int | None = None, default_model: str | None = None) -> "ModelCard":
        """A card from any metadata dict fcnseg has written: a card (``card_version``), or the
        older flat dicts of ``fcnseg train`` / ``convert`` / ``export`` / checkpoints' config.
        ``inferred_classes`` (the weights' class count) and ``num_classes`` (what the caller
        expects) are checked against it."""
        if meta.get("card_version") is not None:
            card = cls.from_dict(meta, source)
        else:
            card = _card_from_legacy(meta, source, inferred_classes, default_model)
        if inferred_classes is not None and inferred_classes != card.num_classes:
            raise UserError(f"{source}: metadata says {card.num_classes} classes but the weights hold "
                            f"{inferred_classes}")
        if num_classes is not None and int(num_classes) != card.num_classes:
            raise UserError(f"{source}: model has {card.num_classes} classes but num_classes={num_classes} "
                            "was requested")
        return card

    @classmethod
    def for_net(cls, net: Any, *, model: str | None = None, num_classes: int | None = None,
                normalization: str | None = None, input_key: str = "image", trained: bool = False,
                **fields: Any) -> "ModelCard":
        """The card of a built net (``net`` may live on the meta device): inputs from its
        ``modalities``, heads from its ``head_classes``, classes from ``num_classes``."""
        n = num_classes if num_classes is not None else getattr(net, "num_classes", None)
        heads_of = getattr(net, "head_classes", None) or {}
        main = getattr(net, "main_head", next(iter(heads_of), None)) if heads_of else None
        head_names = fields.pop("head_class_names", None) or {}
        heads = {h: HeadSpec(int(k), list(head_names.get(h) or [])) for h, k in heads_of.items()}
        if n is None and heads_of:
            n = heads_of[main]
        inputs = fields.pop("inputs", None) or default_inputs(
            net, normalization or getattr(net, "normalization", "imagenet"), input_key)
        return cls(model=model or getattr(net, "model_name", "?"), num_classes=int(n), inputs=inputs,
                   heads=heads, main_head=main, trained=trained, **fields)


def default_inputs(net: Any, normalization: str, input_key: str = "image", *,
                   reference_means: bool = True) -> list[InputSpec]:
    """The inputs of ``net`` with the reference preprocessing: images by ``normalization``,
    HHA minus :data:`REFERENCE_HHA_MEAN`, depth as log(mm) minus :data:`REFERENCE_DEPTH_LOG_MEAN`
    (``reference_means=False``: HHA and depth raw, as nets trained before cards)."""
    hha = REFERENCE_HHA_MEAN if reference_means else None
    logd = REFERENCE_DEPTH_LOG_MEAN if reference_means else None

    def spec(name: str, key: str, channels: int) -> InputSpec:
        return InputSpec(name=name, key=key, channels=channels,
                         normalization=normalization if key == "image" else None,
                         hha_mean=hha if key == "hha" else None,
                         depth_log_mean=logd if key == "depth" else None)

    modalities = getattr(net, "modalities", None)
    if isinstance(modalities, Mapping) and modalities:
        return [spec(m, "image" if m in ("rgb", "color", "image") else m, int(c)) for m, c in modalities.items()]
    from .complexity import input_channels

    try:
        channels = input_channels(net)
    except Exception:  # a net without a first convolution we can find: assume RGB
        channels = 3
    return [spec("image", input_key, 1 if input_key == "depth" else channels)]


def _card_from_legacy(meta: Mapping[str, Any], source: str, inferred_classes: int | None,
                      default_model: str | None) -> ModelCard:
    """The compatibility shim: metadata written before cards (``fcnseg train`` meta,
    ``fcnseg convert`` meta, ``fcnseg export`` meta, a checkpoint's config)."""
    from .preprocess import get_normalization

    for key, kinds, what in (("model", (str, Mapping), "a string"), ("class_names", list, "a list"),
                             ("normalization", str, "a string"), ("options", Mapping, "a mapping"),
                             ("model_options", Mapping, "a mapping")):
        if meta.get(key) is not None and not isinstance(meta[key], kinds):  # a crafted or damaged file
            raise UserError(f"{source}: {key} in its metadata is {type(meta[key]).__name__}; expected {what}")
    model = meta.get("model", default_model)
    if isinstance(model, Mapping):  # a nested model section: {"name": ..., ...}
        model = model.get("name")
    n_meta = meta.get("num_classes")
    names = meta.get("class_names")
    if n_meta is None:
        n_meta = len(names) if names else inferred_classes
    if n_meta is None:
        raise UserError(f"{source}: its metadata does not say how many classes the model has")
    try:
        n = int(n_meta)
    except (TypeError, ValueError):
        raise UserError(f"{source}: num_classes {n_meta!r} in its metadata is not a number") from None
    if names is not None and len(names) != n:
        raise UserError(f"{source}: {len(names)} class names for {n} classes in its metadata")
    palette = meta.get("palette")
    if palette is not None:
        try:
            pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
        except (TypeError, ValueError):
            raise UserError(f"{source}: palette in its metadata is not a list of [r, g, b]") from None
        if pal.size and (pal.min() < 0 or pal.max() > 255):
            raise UserError(f"{source}: palette colours must be 0..255")
        palette = pal.tolist()
    norm = meta.get("normalization") or "imagenet"
    get_normalization(norm)  # validates: a one-line UserError naming the presets
    options = dict(meta.get("options") or meta.get("model_options") or {})
    key = meta.get("input_key") or "image"
    net = _probe(model, n, options)
    if net is not None:  # inputs (depth and HHA unnormalised, as those nets were trained) and heads
        inputs = default_inputs(net, norm, key, reference_means=False)
    else:
        inputs = [InputSpec(key=key if key in _KEYS else "image", normalization=norm)]
    head_names = meta.get("head_class_names") or {}
    head_classes = dict(meta.get("head_classes") or getattr(net, "head_classes", None) or {})
    main = meta.get("main_head") or (getattr(net, "main_head", None) if head_classes else None)
    heads = {h: HeadSpec(int(k), list(head_names.get(h) or [])) for h, k in head_classes.items()}
    known = {"model", "num_classes", "class_names", "palette", "normalization", "options", "model_options",
             "dataset", "input_key", "head_class_names", "head_classes", "main_head", "trained"}
    provenance = {k: v for k, v in meta.items() if k not in known}
    try:
        return ModelCard(model=model or "", num_classes=n, class_names=list(names or []), palette=palette or [],
                         inputs=inputs, options=options, heads=heads, main_head=main,
                         dataset=meta.get("dataset"), trained=bool(meta.get("trained", True)),
                         provenance=provenance)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def _probe(model: str | None, n: int, options: dict[str, Any]) -> Any:
    """The registered net ``model`` built on the meta device (no memory, no init), or None."""
    from .models import get_model, list_models

    if not model or model not in list_models():
        return None
    try:
        with torch.device("meta"):
            return get_model(model, n, **{k: v for k, v in options.items() if k != "pretrained_backbone"})
    except Exception:  # an option this build does not know: the loader reports it when building
        return None


def model_inputs(card: ModelCard, samples: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu", *,
                 channels_last: bool = False, non_blocking: bool = False) -> Tensor | dict[str, Tensor]:
    """THE function from samples (already through the card's transform: tensors) to what the
    net takes: one ``N x C x H x W`` tensor, or ``{name: tensor}`` for multi-input nets.

    ``samples`` is a list of sample dicts, or one collated batch dict (``{"image": N x ...}``).
    """
    def stack(key: str, name: str) -> Tensor:
        if isinstance(samples, Mapping):
            if key not in samples:
                raise UserError(_missing(card, name, key, samples))
            t = samples[key]
        else:
            if key not in samples[0]:
                raise UserError(_missing(card, name, key, samples[0]))
            t = torch.stack([s[key] for s in samples])
        if t.ndim == 3:  # depth: N x H x W -> N x 1 x H x W
            t = t.unsqueeze(1)
        t = t.to(device, non_blocking=non_blocking)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    if card.multi_input:
        return {spec.name: stack(spec.key, spec.name) for spec in card.inputs}
    return stack(card.inputs[0].key, card.inputs[0].name)


def _missing(card: ModelCard, name: str, key: str, sample: Mapping[str, Any]) -> str:
    have = ", ".join(k for k in sample if not str(k).startswith("label") and k not in ("path", "rng")) or "nothing"
    return (f"model {card.model} needs the {key!r} input (for {name!r}) but the data gives only {have} "
            "(data-set option modalities?)")
