"""FCN models: ``get_model(name, num_classes, **options)`` and ``list_models()``.

Every model takes ``N x C x H x W`` and returns ``N x num_classes x H x W`` logits
for every ``H, W >= 1``.
"""
from __future__ import annotations

from . import (  # noqa: F401,E402  (the paper's other data sets and tasks)
    context,
    multimodal,
    multitask,
    zoo,  # noqa: F401  (registers the models)
)
from .fcn import FCN
from .registry import ModelSpec, get_model, list_models, model_spec, register_model

__all__ = ["FCN", "ModelSpec", "get_model", "list_models", "model_spec", "register_model"]
