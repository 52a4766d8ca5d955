"""An exponential moving average of the weights (Polyak averaging), kept beside the trained net.

Why: the last step's weights of a stochastic optimiser sit at one random point of the
minimum's basin; their running average sits nearer its centre and tends to transfer
better to data the net did not see (and varies less from seed to seed). The average is
what a run with ``ema_decay > 0`` validates, and writes as ``best``/``final`` weights;
the raw weights keep training and are checkpointed beside it, so ``--resume`` is exact.

The average is :class:`torch.optim.swa_utils.AveragedModel` (parameters and buffers, so
the BatchNorm statistics are averaged too), with the decay warmed up as TensorFlow's
``ExponentialMovingAverage(num_updates=...)`` does: ``min(decay, (1 + n) / (10 + n))``
after ``n`` updates. Without it, a decay of 0.999 would keep most of the random-init and
early weights for the first thousand steps, longer than a short run lasts.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay used for the update after ``updates`` earlier ones."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _ema_update(decay: float):
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        # int() reads the count from the device; AveragedModel.update_parameters already does
        # (``n_averaged == 0`` / ``> 0``) on every update, so this adds no synchronisation
        d = warmed_up_decay(decay, int(n_averaged))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): a count, not a quantity to average
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class WeightAverage:
    """The running average of ``model``'s parameters and buffers; :meth:`update` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)
        self.averaged.eval()  # it is only ever evaluated and saved, never trained

    @property
    def module(self) -> nn.Module:
        """The averaged net (same class and state-dict keys as the trained one)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the averaged weights as a plain state dict (what inference loads) and
        the number of updates (what the warm-up needs to continue exactly on resume)."""
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.averaged.n_averaged.fill_(int(state["updates"]))
