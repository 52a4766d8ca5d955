"""Learning-rate schedules as multipliers of the base rate (for ``LambdaLR``)."""
from __future__ import annotations

import math
from typing import Callable


def lr_lambda(kind: str, total_steps: int, power: float = 0.9, warmup: int = 0) -> Callable[[int], float]:
    """``fixed`` (the reference), ``poly`` ((1 - t/T)^power) or ``cosine``, with linear warm-up."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = min(step, total) / total
        if kind == "poly":
            return (1.0 - t) ** power
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    return factor
