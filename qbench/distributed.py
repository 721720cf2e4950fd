"""Data-parallel fine-tuning under ``torchrun --nproc_per_node=N -m qbench ...`` (DDP).

Conventions, so that one recipe means one optimisation at any world size:

- ``recipe.batch_size`` is the global (effective) batch: every rank walks the same seeded
  batch sequence and takes its slice ``x[rank::world_size]``; the gradients DDP averages are
  those of the whole batch. The record keeps ``world_size`` and ``effective_batch_size``.
- Every rank calibrates its quantizers on the same calibration images; DDP then broadcasts
  rank 0's parameters and buffers when it wraps the model, so all ranks start bit-identical
  (non-tensor choices made at calibration, such as a signed grid, follow from identical data).
- Only rank 0 writes: the run's config, checkpoints, TensorBoard logs and the record. The FP
  baseline is trained by whichever process takes its file lock first, without DDP.
- Batch norm runs per rank on the rank's slice unless ``recipe.qat.sync_batchnorm`` makes it
  ``SyncBatchNorm`` (CUDA only, :mod:`qbench.engine`); with ``freeze_bn`` it keeps the
  baseline's statistics, as in a single process.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything is a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """Rank and size from torchrun's environment (a single process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU), once."""
    world = current_world()
    if world.parallel and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``); the CPU is shared."""
    if device.type == "cuda" and world.parallel:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def rank_slice(x: torch.Tensor, y: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a global batch."""
    if not world.parallel:
        return x, y
    return x[world.rank::world.size], y[world.rank::world.size]


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` averaged over ranks (so every rank takes the same divergence decision)."""
    if not world.parallel:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / world.size


def barrier(world: World) -> None:
    if world.parallel:
        dist.barrier()
