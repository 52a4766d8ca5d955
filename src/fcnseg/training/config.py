"""Training configuration: a dataclass, YAML files, and command-line overrides.

Every field is documented in its ``metadata["help"]``; ``fcnseg train --help``
is generated from them, so the file format and the CLI never drift apart.
Precedence: dataclass defaults < YAML file < command-line options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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
    model: str = _f("fcn8s_lite0", "model name (see `fcnseg models`)")
    num_classes: int | None = _f(None, "number of classes (default: the data set's)")
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
    normalization: str | None = _f(None, "input preset: caffe or imagenet (default: the model's)")
    input_key: str = _f("image", "sample key fed to single-input nets (image, or hha for the HHA net)")
    crop_size: list | None = _f(None, "random crop [h, w] (padded with ignore); none = full images")
    scale_range: list | None = _f(None, "random scale [min, max]; none = no scaling")
    flip: bool = _f(False, "random horizontal flips")
    color_jitter: bool = _f(False, "random brightness/contrast/saturation")
    photometric: dict | None = _f(None, "appearance augmentation after color_jitter, e.g. {brightness: 0.3, "
                                  "contrast: 0.3, saturation: 0.3, hue: 0.05, gamma: 0.3, blur_p: 0.2, "
                                  "blur_sigma: [0.5, 1.5]}; keys left out are off (fcnseg.data.transforms.Photometric)")
    workers: int = _f(2, "data loader worker processes")
    # optimisation
    epochs: int = _f(1, "number of passes over the training set")
    max_iters: int | None = _f(None, "stop after this many optimiser steps (overrides epochs when smaller)")
    batch_size: int = _f(1, "images per optimiser step and process, before accumulation")
    grad_accum: int = _f(1, "accumulate gradients over this many batches per step")
    optimizer: str = _f("sgd", "sgd or adamw")
    lr: float = _f(1e-10, "base learning rate")
    momentum: float = _f(0.99, "SGD momentum (adamw: beta1)")
    weight_decay: float = _f(5e-4, "weight decay")
    bias_lr_mult: float = _f(2.0, "learning-rate multiplier of biases (reference: 2)")
    bias_decay: bool = _f(False, "apply weight decay to biases (reference: no)")
    backbone_lr_mult: float = _f(1.0, "learning-rate multiplier of the trunk")
    lr_schedule: str = _f("fixed", "fixed, poly or cosine")
    poly_power: float = _f(0.9, "exponent of the poly schedule")
    warmup_iters: int = _f(0, "linear warm-up steps")
    loss_normalize: bool = _f(False, "average the loss over pixels (reference: sum)")
    class_weights: Any = _f(None, "none, median_freq, sqrt_median_freq, or a list of weights")
    loss_sampling_p: float = _f(0.0, "drop each output-stride cell from the loss with this probability")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing")
    nan_policy: str = _f("stop", "on NaN/inf loss or gradients: stop (naming the step and the last good "
                                 "checkpoint) or skip the batch")
    # speed
    amp: str = _f("none", "mixed-precision autocast: none, fp16 (with loss scaling) or bf16; meant for CUDA, "
                          "also runs on CPU")
    channels_last: bool = _f(False, "channels-last memory format")
    device: str = _f("auto", "auto, cpu or cuda")
    threads: int | None = _f(None, "CPU threads for torch (default: torch's choice)")
    sync_bn: bool = _f(True, "convert BatchNorm to SyncBatchNorm under DDP (CUDA only)")
    freeze_bn: bool = _f(False, "keep BatchNorm statistics fixed (eval mode) while training; small batches")
    # bookkeeping
    run_dir: str = _f("runs/run", "output folder (checkpoints, logs)")
    seed: int = _f(0, "random seed (data order, augmentation, init)")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    log_every: int = _f(20, "log a training row every N steps")
    val_every: int = _f(1, "validate every N epochs (0 = only at the end)")
    val_every_iters: int | None = _f(None, "also validate every N steps")
    checkpoint_every: int = _f(100, "write last.pt every N steps (a crash loses at most this many)")
    val_flip: bool = _f(False, "flip test-time augmentation during validation")
    tensorboard: bool = _f(False, "also write TensorBoard event files")
    progress: bool = _f(True, "show a progress bar")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: unknown option {unknown[0]!r} (see `fcnseg train --help`)")
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        checks = [
            (self.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (self.lr_schedule in ("fixed", "poly", "cosine"),
             f"lr_schedule must be fixed, poly or cosine, got {self.lr_schedule!r}"),
            (self.amp in ("none", "fp16", "bf16"), f"amp must be none, fp16 or bf16, got {self.amp!r}"),
            (self.nan_policy in ("stop", "skip"), f"nan_policy must be stop or skip, got {self.nan_policy!r}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (0.0 <= self.loss_sampling_p < 1.0, f"loss_sampling_p must be in [0, 1), got {self.loss_sampling_p}"),
            (self.crop_size is None or (isinstance(self.crop_size, list) and len(self.crop_size) == 2),
             f"crop_size must be [h, w], got {self.crop_size!r}"),
            (self.scale_range is None or (isinstance(self.scale_range, list) and len(self.scale_range) == 2),
             f"scale_range must be [min, max], got {self.scale_range!r}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"{source}: {msg}")
        if self.photometric is not None:
            from ..data.transforms import Photometric

            if not isinstance(self.photometric, dict):
                raise UserError(f"{source}: photometric must be a mapping such as {{hue: 0.05, gamma: 0.3}}, "
                                f"got {self.photometric!r}")
            try:
                Photometric(**self.photometric)
            except TypeError:
                raise UserError(f"{source}: photometric options are brightness, contrast, saturation, hue, gamma, "
                                f"blur_p, blur_sigma; got {', '.join(map(str, self.photometric))}") from None
            except ValueError as exc:
                raise UserError(f"{source}: {exc}") from None


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
    hints = typing.get_type_hints(TrainConfig)
    for key, value in list(data.items()):
        hint = hints.get(key)
        optional = hint is Any or type(None) in typing.get_args(hint)
        if isinstance(value, str) and value.strip().lower() == "none" and optional:
            data[key] = value = None  # `--crop-size none`: YAML spells it null, users say none
        if hint is str and value is not None and not isinstance(value, str):
            data[key] = str(value)
        if hint in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        if hint is float and isinstance(value, str):
            try:
                data[key] = float(value)
            except ValueError:
                raise UserError(f"{source}: option {key} expects a number, got {value!r}") from None
    return TrainConfig.from_dict(data, source)
