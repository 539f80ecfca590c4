"""Data-parallel training: PyTorch DDP under ``torchrun``, and the per-step random
numbers that make N processes follow one (docs/ARCHITECTURE.md, "Training on many
devices").

* :class:`World` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``) and starts the process group: NCCL on GPUs, gloo on CPU.  One
  process without that environment is a world of one and touches nothing of
  ``torch.distributed``.
* The config's ``batch`` is the **global** batch.  Every rank builds the same
  deterministic global batch of step k (:class:`ecdp.data.PatchSampler`) and keeps its
  contiguous shard of ``batch / world`` rows (:func:`shard`).
* Random numbers: a method draws every per-sample random tensor of a training step
  (noise levels, noise, x(T) of the quality loss, a chain's noise) with
  :func:`batch_rand` / :func:`batch_randn` / :func:`batch_randint`.  Outside a
  :func:`batch_shard` context they are ``torch.rand`` / ``randn`` / ``randint``; inside
  one each rank draws the rows of the *global* batch from the same generator state
  (the loop reseeds it per step) and keeps its own, so rank r's sample i gets the
  numbers one process gives sample ``r * b + i``.  With gradients averaged over ranks
  (batch-mean losses) N processes then take the same optimiser steps as one, up to the
  order of float additions in the all-reduce (not bit-identical).  An adaptive ODE
  solver in the loss (ECDP's quality stage) chooses its steps from the error of the
  rank's own shard, so there the agreement is the solver tolerance's.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch

_SHARD: tuple[int, int | None] = (0, None)   # (first row of this rank, global batch) of the step being trained


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``torchrun``'s environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env=None) -> "World":
        env = os.environ if env is None else env
        size = int(env.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(env["RANK"]), size, int(env.get("LOCAL_RANK", env["RANK"])))

    @property
    def main(self) -> bool:
        """Rank 0 writes logs, checkpoints and the final model."""
        return self.rank == 0

    def start(self, device: str) -> torch.device:
        """Join the process group (NCCL for CUDA, gloo for CPU); the device this rank trains on."""
        dev = torch.device(device)
        if self.size > 1:
            import torch.distributed as dist

            if dev.type == "cuda":
                dev = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                        timeout=datetime.timedelta(minutes=30))
        return dev

    def stop(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (itself for one process)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        out = value.detach().clone()
        dist.all_reduce(out)
        return out / self.size

    def local_batch(self, batch: int) -> int:
        if batch % self.size:
            raise ValueError(f"train.stages[].batch: {batch} is the global batch and must divide by the "
                             f"{self.size} training processes")
        return batch // self.size


def shard(indices: list, world: World) -> list:
    """Rank r's contiguous share of a global batch's indices."""
    b = world.local_batch(len(indices))
    return indices[world.rank * b:(world.rank + 1) * b]


@contextlib.contextmanager
def batch_shard(world: World, global_batch: int):
    """Within: the ``batch_*`` draws give this rank's rows of the global batch's numbers."""
    global _SHARD
    old = _SHARD
    _SHARD = (world.rank * world.local_batch(global_batch), global_batch) if world.size > 1 else (0, None)
    try:
        yield
    finally:
        _SHARD = old


def _draw(make, shape):
    shape = tuple(shape)
    offset, total = _SHARD
    if total is None or not shape:
        return make(shape)
    return make((total, *shape[1:]))[offset:offset + shape[0]]


def batch_rand(shape, *, generator=None, device=None, dtype=None) -> torch.Tensor:
    """``torch.rand(shape)``; under :func:`batch_shard` this rank's rows of the global draw."""
    return _draw(lambda s: torch.rand(s, generator=generator, device=device, dtype=dtype), shape)


def batch_randn(shape, *, generator=None, device=None, dtype=None) -> torch.Tensor:
    """``torch.randn(shape)``; under :func:`batch_shard` this rank's rows of the global draw."""
    return _draw(lambda s: torch.randn(s, generator=generator, device=device, dtype=dtype), shape)


def batch_randint(high: int, shape, *, generator=None, device=None) -> torch.Tensor:
    """``torch.randint(0, high, shape)``; under :func:`batch_shard` this rank's rows of the global draw."""
    return _draw(lambda s: torch.randint(0, high, s, generator=generator, device=device), shape)
