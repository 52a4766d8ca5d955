"""TorchScript archives written by ``fcnseg export --format torchscript`` (``.pt``), loaded for prediction.

Such a file shares the ``.pt`` suffix with training checkpoints but is a different thing:
a traced program plus the model's metadata (``extra/fcnseg.json``). ``load_model`` sends it
here instead of calling it a damaged checkpoint (and builds the Segmenter from
:class:`TorchScriptBackend` and its metadata). A traced archive runs TorchScript ops only
(no Python code), as ``torch.jit.load`` reads it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..training.checkpoint import is_torchscript_archive

__all__ = ["TorchScriptBackend", "is_torchscript_archive"]


class TorchScriptBackend:
    """A TorchScript module on ``device``: normalised ``N x 3 x H x W`` in, logits out."""

    name = "torchscript"

    def __init__(self, path: Path, device: torch.device) -> None:
        from ..runtime.export import META_FILE

        extra = {META_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "switch to torch.export": said to exporters
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated")
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise UserError(f"{path}: a TorchScript archive that cannot be loaded ({first})") from None
        self.module = module.eval()
        self.device = device
        try:
            meta = json.loads(extra[META_FILE] or "{}")
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            raise UserError(f"{path}: its {META_FILE} metadata is not a JSON object")
        if not meta:
            raise UserError(f"{path}: a TorchScript archive without fcnseg metadata; cannot tell its classes and "
                            "normalisation (write it with `fcnseg export --format torchscript`)")
        from ..weights import check_finite

        check_finite(dict(module.state_dict()), str(path))
        #: the model's metadata as export wrote it (a model card, or the older flat dict)
        self.meta: dict[str, Any] = meta

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(x.to(self.device))
