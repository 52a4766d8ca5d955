"""Inference: ``load_model(name_or_path)`` -> :class:`Segmenter` with ``predict`` / ``predict_batch``.

>>> import fcnseg
>>> model = fcnseg.load_model("camvid-fcn8s-lite0")        # doctest: +SKIP
>>> labels = model.predict("street.jpg")                    # doctest: +SKIP
>>> labels, probs = model.predict(img_array, return_probs=True, tta="flip")  # doctest: +SKIP

Submodules: :mod:`.loader` (name/file resolution), :mod:`.predictor` (the
Segmenter), :mod:`.tiling` (bounded-memory inference for huge images, exact),
:mod:`.tta` (flip / multi-scale test-time augmentation), :mod:`.backends`
(PyTorch and onnxruntime execution).
"""
from __future__ import annotations

from .loader import ModelInfo, UntrainedModelWarning, list_shipped_models, load_model, load_net, shipped_weights_path
from .predictor import Segmenter
from .tta import TTA, parse_tta

__all__ = ["load_model", "load_net", "Segmenter", "ModelInfo", "UntrainedModelWarning", "TTA", "parse_tta",
           "list_shipped_models", "shipped_weights_path"]
