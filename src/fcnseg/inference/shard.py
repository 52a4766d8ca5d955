"""Many processes, one output tree: ``torchrun --nproc_per_node N -m fcnseg.cli.main predict ...``.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set), each process takes every
``WORLD_SIZE``-th input file (by the sorted path, so the split does not depend on the
order files were found), runs on its own device (``cuda:LOCAL_RANK`` when CUDA is used,
else the CPU) and writes into the shared output folder: one tree, each file written by
exactly one process. At the end the ranks add up their counts (``torch.distributed``:
gloo, CPU tensors, so it works with or without GPUs), so every rank returns the same exit
status (1 if any image failed anywhere) and rank 0 prints the totals.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

__all__ = ["Shard", "shard_from_env"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def take(self, jobs: Sequence[T], key=lambda j: str(j[0])) -> list[T]:
        """This rank's share of ``jobs``: every ``world``-th one in sorted order."""
        ordered = sorted(jobs, key=key)
        return ordered[self.rank::self.world]

    def device(self, device: str | None) -> str:
        """``cuda:LOCAL_RANK`` where the run uses CUDA (``cuda`` or ``auto`` with a GPU), else ``device``."""
        name = device or "auto"
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and self.active:
            return f"cuda:{self.local_rank % max(1, torch.cuda.device_count())}"
        return name

    def init(self) -> None:
        """Join the process group (gloo: host tensors, with or without GPUs), once."""
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world, timeout=timedelta(hours=2))

    def sum(self, *counts: int) -> tuple[int, ...]:
        """Every rank's counts added up (each rank gets the totals)."""
        if not self.active:
            return counts
        import torch.distributed as dist

        self.init()
        t = torch.tensor(counts, dtype=torch.int64)
        dist.all_reduce(t)
        return tuple(int(v) for v in t)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's list joined in rank order (picklable items; each rank gets the whole list)."""
        if not self.active:
            return list(items)
        import torch.distributed as dist

        self.init()
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, list(items))
        return [x for part in parts for x in part]

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def shard_from_env() -> Shard:
    """The shard of this process under ``torchrun`` (``Shard()``, the whole input, otherwise)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return Shard()
    if world < 2 or not 0 <= rank < world:
        return Shard()
    return Shard(rank, world, local)
