"""Data-parallel meta-training on PyTorch's own engine (``torchrun`` + ``torch.distributed``).

Under ``torchrun`` every process (rank) runs the same training loop. Each global
meta-batch of B tasks (drawn with the same seed on every rank, so it does not depend on the
number of processes) is split into disjoint shards, one per rank; each rank computes
``sum(per-task query losses of its shard) / B`` and its gradient, and the gradients are
summed with ``all_reduce``. The result is exactly the single-process gradient of the mean
over the global batch, up to floating-point summation order. Backend: ``gloo`` on CPU,
``nccl`` on CUDA. Only rank 0 writes checkpoints, metrics and the bundle.

A rank that fails raises; ``torchrun`` then tears the job down, and the process group's
``timeout`` bounds how long the surviving ranks can wait in a collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``; ``device`` to compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present (this rank's GPU), else CPU; ``cuda`` requires a GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from melu.errors import ConfigError

            raise ConfigError("device: cuda was requested but no CUDA GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name != "cpu":
        from melu.errors import ConfigError

        raise ConfigError(f"device: {name!r} is not one of auto, cpu, cuda")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group when launched by ``torchrun``; a no-op context otherwise."""
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor, ctx: DistContext) -> Tensor:
    """This rank's disjoint share of a global meta-batch (strided: sizes differ by ≤ 1)."""
    return indices[ctx.rank :: ctx.world_size]


def all_reduce_grads(params: Iterable[Tensor], ctx: DistContext) -> None:
    """Sum ``.grad`` of ``params`` over ranks in place (one flat bucket, one collective)."""
    if not ctx.enabled:
        return
    tensors = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tensors]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(tensors, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).clone()
        offset += n


def all_reduce_sum(values: Tensor, ctx: DistContext) -> Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity in one process)."""
    if not ctx.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
