"""Training configuration: a dataclass, YAML files, and command-line overrides.

Every field is documented in its ``metadata["help"]``; ``fcnseg train --help``
is generated from them, so the file format and the CLI never drift apart.
Precedence: dataclass defaults < YAML file < command-line options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    model: str = _f("fcn8s_lite0", "model name (see `fcnseg models`)", nonempty=True)
    num_classes: int | None = _f(None, "number of classes (default: the data set's)", min=1)
    model_options: dict = _f({}, "extra model builder options, e.g. {learnable_upsampling: true}")
    pretrained_backbone: bool = _f(False, "load ImageNet trunk weights shipped with the backbone package")
    init_from: str | None = _f(None, "transplant a coarser FCN's weights (checkpoint or .safetensors), e.g. 32s -> 16s")
    backbone_weights: str | None = _f(None, "convolutionalize an ImageNet classifier state dict "
                                            "(torchvision VGG16 format)")
    # data
    dataset: str = _f("camvid", "data set name (camvid, voc, sbd, pascal-context, nyud, siftflow, folder)")
    data_root: str = _f("../shared/data/camvid", "data set root folder")
    train_split: str = _f("train", "training split")
    val_split: str | None = _f("val", "validation split (empty to skip validation)")
    val_dataset: str | None = _f(None, "validation data set name if not the training one "
                                       "(VOC: train sbd, validate voc)")
    val_data_root: str | None = _f(None, "validation data set root if not data_root")
    dataset_options: dict = _f({}, "extra data set options (e.g. classes file for 'folder')")
    normalization: str | None = _f(None, "input preset: caffe or imagenet (default: the model's)",
                                     choices=("caffe", "imagenet", "caffe-nyud", "caffe-siftflow"))
    input_key: str = _f("image", "sample key fed to single-input nets (image, or hha for the HHA net)")
    crop_size: list | None = _f(None, "random crop [h, w] (padded with ignore); none = full images",
                                items=(int, 2), min=1)
    scale_range: list | None = _f(None, "random scale [min, max]; none = no scaling", items=(float, 2), gt=0,
                                  ordered=True)
    input_scale: float = _f(1.0, "the scale the net sees images at, recorded in its model card: predict, eval and "
                               "validation resize each image by it (a net trained on enlarged images, e.g. "
                               "scale_range [1.125, 2.25], is run at 1.5)", min=0.125, max=8)
    flip: bool = _f(False, "random horizontal flips")
    color_jitter: bool = _f(False, "random brightness/contrast/saturation")
    photometric: dict | None = _f(None, "appearance augmentation after color_jitter, e.g. {brightness: 0.3, "
                                  "contrast: 0.3, saturation: 0.3, hue: 0.05, gamma: 0.3, blur_p: 0.2, "
                                  "blur_sigma: [0.5, 1.5]}; keys left out are off (fcnseg.data.transforms.Photometric)",
                                  check="_check_photometric")
    workers: int = _f(2, "data loader worker processes", min=0)
    # optimisation
    epochs: int = _f(1, "number of passes over the training set", min=1)
    max_iters: int | None = _f(None, "stop after this many optimiser steps (overrides epochs when smaller)", min=1)
    batch_size: int = _f(1, "images per optimiser step and process, before accumulation", min=1)
    grad_accum: int = _f(1, "accumulate gradients over this many batches per step", min=1)
    optimizer: str = _f("sgd", "sgd or adamw", choices=("sgd", "adamw"))
    lr: float = _f(1e-10, "base learning rate", gt=0)
    momentum: float = _f(0.99, "SGD momentum (adamw: beta1)", min=0, lt=1)
    weight_decay: float = _f(5e-4, "weight decay", min=0)
    bias_lr_mult: float = _f(2.0, "learning-rate multiplier of biases (reference: 2)", min=0)
    bias_decay: bool = _f(False, "apply weight decay to biases (reference: no)")
    backbone_lr_mult: float = _f(1.0, "learning-rate multiplier of the trunk", min=0)
    lr_schedule: str = _f("fixed", "fixed, poly or cosine", choices=("fixed", "poly", "cosine"))
    poly_power: float = _f(0.9, "exponent of the poly schedule", min=0)
    warmup_iters: int = _f(0, "linear warm-up steps", min=0)
    ema_decay: float = _f(0.0, "keep an exponential moving average of the weights with this decay per step "
                          "(e.g. 0.999; warmed up over the first steps) and validate and ship it; 0 = off",
                          min=0, lt=1)
    loss_normalize: bool = _f(False, "average the loss over pixels (reference: sum)")
    class_weights: Any = _f(None, "none, median_freq, sqrt_median_freq, or a list of weights",
                            check="_check_class_weights")
    loss_sampling_p: float = _f(0.0, "drop each output-stride cell from the loss with this probability",
                                 min=0, lt=1)
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing", min=0, max=1)
    ohem_keep: float = _f(1.0, "online hard-example mining: the loss keeps only this fraction of each "
                               "batch's valid pixels, those with the largest loss (1 = all)", gt=0, max=1)
    lovasz_weight: float = _f(0.0, "add this times the Lovász-softmax loss (a surrogate of per-class IoU; "
                                   "main head)", min=0)
    nan_policy: str = _f("stop", "on NaN/inf loss or gradients: stop (naming the step and the last good "
                                 "checkpoint) or skip the batch", choices=("stop", "skip"))
    # speed
    amp: str = _f("none", "mixed-precision autocast: none, fp16 (with loss scaling) or bf16; meant for CUDA, "
                          "also runs on CPU", choices=("none", "fp16", "bf16"))
    channels_last: bool = _f(False, "channels-last memory format")
    device: str = _f("auto", "auto, cpu or cuda", pattern=r"auto|cpu|cuda(:\d+)?",
                    expect="auto, cpu, cuda or cuda:N")
    threads: int | None = _f(None, "CPU threads for torch (default: torch's choice)", min=1)
    sync_bn: bool = _f(True, "convert BatchNorm to SyncBatchNorm under DDP (CUDA only)")
    freeze_bn: bool = _f(False, "keep BatchNorm statistics fixed (eval mode) while training; small batches")
    # bookkeeping
    run_dir: str = _f("runs/run", "output folder (checkpoints, logs)", nonempty=True)
    seed: int = _f(0, "random seed (data order, augmentation, init)", min=0, max=2 ** 32 - 1)
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    log_every: int = _f(20, "log a training row every N steps", min=1)
    val_every: int = _f(1, "validate every N epochs (0 = only at the end)", min=0)
    val_every_iters: int | None = _f(None, "also validate every N steps", min=1)
    checkpoint_every: int = _f(100, "write last.pt every N steps (a crash loses at most this many)", min=1)
    val_flip: bool = _f(False, "flip test-time augmentation during validation")
    tensorboard: bool = _f(False, "also write TensorBoard event files")
    progress: bool = _f(True, "show a progress bar")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build a config from plain values, validated first: every wrong option is named in
        one error (nothing is created before this passes)."""
        values, problems = check_options(data)
        if problems:
            raise UserError(f"{source}: {len(problems)} invalid option{'s' if len(problems) > 1 else ''}: "
                            + "; ".join(problems))
        return cls(**values)

    def validate(self, source: str = "config") -> None:
        """Re-check this config's values (after changing fields in code)."""
        _, problems = check_options(self.to_dict())
        if problems:
            raise UserError(f"{source}: " + "; ".join(problems))


# --------------------------------------------------------------------------- validation
# Each field's type comes from its annotation, its range from its metadata: ``min``/``max``
# (inclusive), ``gt``/``lt`` (exclusive), ``choices``, ``pattern``, ``nonempty``, ``items``
# (element type and count of a list), ``ordered`` (list ascending), ``expect`` (the wording of
# what is expected), ``check`` (the name of a function for the odd field, returning the converted
# value and its problem text, naming the option). One declaration drives --help, the checks and
# their messages.

_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
         list: "a list"}


def _base(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``Any`` -> ``(Any, True)``."""
    if hint is Any:
        return Any, True
    args = typing.get_args(hint)
    if args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), type(None) in args
    return hint, False


def _range_text(meta: dict[str, Any]) -> str:
    lo = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["max"]) if "max" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f" in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def _expected(kind: Any, meta: dict[str, Any], optional: bool) -> str:
    if "expect" in meta:
        text = meta["expect"]
    elif "choices" in meta:
        text = "one of " + ", ".join(map(str, meta["choices"]))
    elif "items" in meta:
        etype, n = meta["items"]
        text = f"a list of {n} {'integers' if etype is int else 'numbers'}{_range_text(meta)}"
    else:
        text = _KIND.get(kind, "a value") + _range_text(meta)
    return text + (" or null" if optional else "")


def _scalar(kind: Any, value: Any) -> tuple[Any, bool]:
    """``value`` as ``kind`` (int, float, bool, str), and whether that worked. YAML 1.1 reads
    ``1e-3`` as a string, so numeric strings are accepted for floats, nothing else is coerced
    beyond int -> float and number -> str."""
    if kind is bool:
        return value, isinstance(value, bool)
    if isinstance(value, bool):
        return value, kind is Any
    if kind is int:
        return value, isinstance(value, int)
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value, False
        if isinstance(value, int):
            value = float(value)
        return value, isinstance(value, float) and math.isfinite(value)
    if kind is str:
        if isinstance(value, (int, float)):
            value = str(value)
        return value, isinstance(value, str)
    if kind in (dict, list):
        if kind is list and isinstance(value, tuple):
            value = list(value)
        return value, isinstance(value, kind)
    return value, True


def _in_range(value: Any, meta: dict[str, Any]) -> bool:
    return not (("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"])
                or ("gt" in meta and value <= meta["gt"]) or ("lt" in meta and value >= meta["lt"]))


def _check_class_weights(value: Any) -> tuple[Any, str | None]:
    if value in (None, "none", "median_freq", "sqrt_median_freq"):
        return value, None
    if isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in value):
        return value, None
    return value, ("class_weights: expected none, median_freq, sqrt_median_freq or a list of numbers >= 0, "
                   f"got {value!r}")


_PHOTOMETRIC_KNOBS = ("brightness", "contrast", "saturation", "hue", "gamma", "blur_p", "blur_sigma")


def _check_photometric(value: Any) -> tuple[Any, str | None]:
    """``photometric``: a mapping of :class:`fcnseg.data.transforms.Photometric` knobs, each a
    number (``blur_sigma`` a ``[min, max]`` pair). Types are checked here like every other
    option's; the ranges are Photometric's own (one source), checked knob by knob so that every
    wrong knob is named at once."""
    from ..data.transforms import Photometric

    if not isinstance(value, dict):
        return value, f"photometric must be a mapping such as {{hue: 0.05, gamma: 0.3}}, got {value!r}"
    problems = []
    if any(k not in _PHOTOMETRIC_KNOBS for k in value):
        problems.append(f"photometric options are {', '.join(_PHOTOMETRIC_KNOBS)}; got {', '.join(map(str, value))}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key not in _PHOTOMETRIC_KNOBS:
            continue
        if key == "blur_sigma":
            items = [_scalar(float, x) for x in v] if isinstance(v, (list, tuple)) else []
            ok = len(items) == 2 and all(good for _, good in items)
            conv: Any = [x for x, _ in items]
            expected = "a list of 2 numbers [min, max]"
        else:
            conv, ok = _scalar(float, v)
            expected = "a number"
        if not ok:
            problems.append(f"photometric {key}: expected {expected}, got {v!r}")
            continue
        try:
            Photometric(**{key: conv})
        except ValueError as exc:
            problems.append(str(exc))
            continue
        out[key] = conv
    return (value, "; ".join(problems)) if problems else (out, None)


def _check_one(name: str, hint: Any, meta: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    kind, optional = _base(hint)
    if isinstance(value, str) and value.strip().lower() == "none" and optional:
        value = None  # `--crop-size none`: YAML spells it null, users say none
    if value is None:
        return None, None if optional else f"{name}: expected {_expected(kind, meta, False)}, got null"
    if "check" in meta:  # the odd field's own function: (converted value, its whole problem text or None)
        return globals()[meta["check"]](value)
    bad = f"{name}: expected {_expected(kind, meta, optional)}, got {value!r}"
    value, ok = _scalar(kind, value)
    if not ok:
        return value, bad
    if "items" in meta:
        etype, n = meta["items"]
        items = [_scalar(etype, v) for v in value]
        if len(value) != n or not all(ok and _in_range(v, meta) for v, ok in items):
            return value, bad
        value = [v for v, _ in items]
        if meta.get("ordered") and value != sorted(value):
            return value, f"{name}: expected [min, max] with min <= max, got {value!r}"
        return value, None
    if "choices" in meta and value not in meta["choices"]:
        return value, bad
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        return value, bad
    if meta.get("nonempty") and not value.strip():
        return value, f"{name}: expected a non-empty string"
    if kind in (int, float) and not _in_range(value, meta):
        return value, bad
    return value, None


def check_options(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(values with their declared types, problems)``: every unknown option and every value of
    the wrong type or out of its declared range, each naming its option and what it expects."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    problems = [f"unknown option {k!r} (see `fcnseg train --help`)" for k in data if k not in fields]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields:
            values[key], problem = _check_one(key, hints[key], dict(fields[key].metadata), value)
            if problem:
                problems.append(problem)
    scale, crop, batch = values.get("scale_range"), values.get("crop_size"), values.get("batch_size", 1)
    if isinstance(scale, list) and crop is None and isinstance(batch, int) and batch > 1:
        problems.append("scale_range without crop_size gives images of different sizes, which cannot be "
                        "batched (batch_size > 1): set crop_size, or scale_range: null")
    sampling, keep = values.get("loss_sampling_p", 0.0), values.get("ohem_keep", 1.0)
    if isinstance(sampling, (int, float)) and isinstance(keep, (int, float)) and sampling > 0 and keep < 1:
        problems.append("loss_sampling_p and ohem_keep < 1 cannot be combined (each chooses which pixels "
                        "the loss sees: pick one)")
    return values, problems


def _parse_value(text: str) -> Any:
    """Command-line values are YAML scalars/lists: ``0.01``, ``true``, ``[288, 384]``, ``null``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per config field (underscores as dashes), documented from the field."""
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS, metavar="VALUE",
            help=f"{f.metadata['help']} (default: {json.dumps(default)})",
        )


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's options, after those of the file its ``base:`` key names (a path relative to
    it, itself possibly with a ``base:``): near-identical recipes (VOC 32s/16s/8s) state only what
    differs; ``key: null`` in the file unsets what the base set."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found" + (f" (base of {chain[-1]})" if chain else "")) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise UserError(f"{path}: base must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in chain + (path.resolve(),):
        raise UserError(f"{path}: base {base} includes itself")
    return {**_read_yaml(base_path, chain + (path.resolve(),)), **loaded}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (after its ``base:`` file, if any), then ``overrides``
    (strings are parsed as YAML)."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        data.update(_read_yaml(path))
    for key, value in (overrides or {}).items():
        data[key] = _parse_value(value) if isinstance(value, str) else value
    return TrainConfig.from_dict(data, source)
