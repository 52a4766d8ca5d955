"""torch.distributed set-up for ``torchrun`` (NCCL on GPUs, gloo on CPU), and a
resumable distributed sampler."""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def init_distributed(device: str) -> tuple[int, int, int]:
    """Initialise the process group when launched by torchrun; returns (rank, world, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return rank, world, local


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ResumableSampler(Sampler[int]):
    """Shuffled (seed, epoch) order, split into global batches, each process taking a
    contiguous slice of every global batch; starts at any global-batch position.

    Splitting each global batch (rather than interleaving the whole epoch, as
    ``DistributedSampler`` does) makes a run on W processes with batch B/W see the
    same images per step as one process with batch B, and lets a resumed run pick
    up at the exact step where it stopped.
    """

    def __init__(self, size: int, global_batch: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        self.size, self.global_batch, self.seed, self.shuffle = size, global_batch, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch  # the last incomplete batch is dropped

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        local = self.global_batch // self.world
        for step in range(self.start_step, self.steps_per_epoch()):
            base = step * self.global_batch + self.rank * local
            yield from order[base:base + local]

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * (self.global_batch // self.world)
