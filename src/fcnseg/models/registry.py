"""Model registry: one name, one builder, with the facts ``fcnseg models`` shows."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    output_stride: int
    default_num_classes: int
    trunk: str
    description: str
    #: capabilities, checked against the built net by the registry test suite (tests/test_registry.py)
    trains: bool = True  # its parameters get gradients from a segmentation loss
    exports_onnx: bool = True  # fcnseg export --format onnx works
    two_heads: bool = False  # returns a dict of heads (SIFT Flow sem + geo)
    multi_input: bool = False  # takes a dict of modalities (RGB-D, RGB + HHA)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, output_stride: int, trunk: str, default_num_classes: int = 21,
                   description: str = "", trains: bool = True, exports_onnx: bool = True, two_heads: bool = False,
                   multi_input: bool = False) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, fn, output_stride, default_num_classes, trunk,
                                    description or (fn.__doc__ or "").strip().splitlines()[0],
                                    trains=trains, exports_onnx=exports_onnx, two_heads=two_heads,
                                    multi_input=multi_input)
        return fn

    return decorator


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}") from None


def get_model(name: str, num_classes: int | None = None, **options) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (the model's default if None).

    Options are builder keywords (``pretrained_backbone``, ``in_channels``,
    ``learnable_upsampling``, ...); an unknown option is an error naming the valid ones.
    """
    spec = model_spec(name)
    params = inspect.signature(spec.builder).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        valid = [k for k in params if k != "num_classes"]
        raise UserError(f"model {name!r} has no option {unknown[0]!r}; valid options: {', '.join(valid) or 'none'}")
    n = spec.default_num_classes if num_classes is None else int(num_classes)
    if n < 1:
        raise UserError(f"num_classes must be >= 1, got {n}")
    model = spec.builder(num_classes=n, **options)
    model.model_name = name
    return model
