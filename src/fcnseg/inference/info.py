"""What a loaded model is: :class:`ModelInfo`, its model card plus where it was loaded from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..card import ModelCard

__all__ = ["ModelInfo"]


@dataclass
class ModelInfo:
    """What a loaded model is: its :class:`~fcnseg.card.ModelCard`, the name it was loaded by and
    where it came from. The card's fields are mirrored as attributes for convenience."""

    name: str
    card: ModelCard
    source: str = ""

    @property
    def model(self) -> str | None:
        return self.card.model or None

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def palette(self) -> np.ndarray:
        return self.card.palette_array

    @property
    def normalization(self) -> str:
        return self.card.normalization

    @property
    def options(self) -> dict[str, Any]:
        return self.card.options

    @property
    def trained(self) -> bool:
        return self.card.trained

    @property
    def meta(self) -> dict[str, Any]:
        """The card as the flat metadata dict of weights files (``dataset``, ``head_class_names``, ...)."""
        return self.card.to_meta()
