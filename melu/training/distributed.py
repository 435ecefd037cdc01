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

Test hook: ``MELU_FAIL_RANK=<r>`` makes rank ``r`` raise ``InjectedFailure`` right after its
first outer step (``fail_if_requested``). It exists so the test suite can check that one
failing rank brings the whole job down with its error instead of hanging; never set it
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from melu.errors import ConfigError, MeluError

FAIL_RANK_ENV = "MELU_FAIL_RANK"


class InjectedFailure(MeluError):
    """Raised on purpose by the ``MELU_FAIL_RANK`` test hook."""


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


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``auto`` (or None) → CUDA when present (this rank's GPU), else CPU; ``cuda`` (or
    ``cuda:N``) requires a GPU; a ``torch.device`` is returned as it is."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name is not None and name.split(":")[0] == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was requested but no CUDA GPU is available")
        if ":" in name:
            return torch.device(name)
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    raise ConfigError(f"device: {name!r} is not one of auto, cpu, cuda")


def init_distributed(
    device: str | torch.device | None = "auto", timeout_s: float = 600.0
) -> DistContext:
    """Join the process group when launched by ``torchrun``; a no-op context otherwise.

    ``timeout_s`` bounds every collective: a rank left waiting for a dead peer raises
    after that long instead of hanging forever.
    """
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"device: local rank {local_rank} has no GPU of its own "
                f"({torch.cuda.device_count()} here): run one process per GPU"
            )
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor, ctx: DistContext) -> Tensor:
    """This rank's disjoint share of a global meta-batch (strided: sizes differ by ≤ 1;
    a rank may get none when the batch has fewer tasks than there are ranks)."""
    return indices[ctx.rank :: ctx.world_size]


def contiguous_range(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous share of ``range(n)`` (for sharded evaluation)."""
    return slice(ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size)


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
    """Sum a tensor over ranks (a new tensor on ``values``' device; identity in one
    process). It travels on ``ctx.device``, so CPU statistics work under nccl too."""
    if not ctx.enabled:
        return values
    out = values.to(ctx.device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def all_agree(value: int, ctx: DistContext) -> bool:
    """Whether every rank passed the same ``value`` (always true in one process)."""
    if not ctx.enabled:
        return True
    both = torch.tensor([value, -value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)  # (max, -min)
    return int(both[0]) == -int(both[1])


def broadcast_(tensors: Iterable[Tensor], ctx: DistContext, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (one flat collective)."""
    if not ctx.enabled:
        return
    items = list(tensors)
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in items]).to(ctx.device)
        dist.broadcast(flat, src=src)
        offset = 0
        for t in items:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index or 0])
        else:
            dist.barrier()


def fail_if_requested(ctx: DistContext, step: int) -> None:
    """Test hook (see the module docstring): raise on rank ``$MELU_FAIL_RANK``."""
    value = os.environ.get(FAIL_RANK_ENV)
    if value is not None and value.strip() == str(ctx.rank):
        raise InjectedFailure(
            f"{FAIL_RANK_ENV}={value}: rank {ctx.rank} fails on purpose after step {step}"
        )
