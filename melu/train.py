"""Meta-training: Adam on the meta-learned initialisation, early stopping, checkpoints.

``MetaTrainer`` knows the model only through ``melu.maml``: ``meta_batches(epoch)`` draws
the seeded global meta-batches (index tensors into the training TaskSet), ``step(indices)``
runs one outer update on them. The two are separate so a data-parallel driver can give
each rank a disjoint shard of every global batch: it calls ``step(shard, denominator=B,
reduce_grads=...)`` and sums the gradients across ranks before the optimiser step.
``train(..., ctx=init_distributed(...))`` is that driver (see ``melu.distributed``).

``train`` runs epochs, evaluates the validation users' query MAE before (0 steps) and after
adaptation, keeps the best weights, stops on ``patience``, checkpoints every epoch
atomically, writes ``metrics.jsonl`` and finally the model bundle (``out/model``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from melu.bundle import save_bundle
from melu.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from melu.config import Config
from melu.distributed import (
    DistContext,
    all_agree,
    all_reduce_grads,
    all_reduce_sum,
    barrier,
    broadcast_,
    contiguous_range,
    fail_if_requested,
    resolve_device,
    shard,
)
from melu.errors import BundleError
from melu.maml import Examples, adapted_predictions, meta_loss, task_examples, trim
from melu.model import Params, PreferenceEstimator, init_params
from melu.prepare import Prepared
from melu.tasks import TaskSet

Progress = Callable[[dict[str, Any]], None]
GradHook = Callable[[list[Tensor]], None]


@dataclass
class TrainResult:
    """Where the bundle went, the best epoch, and one dict per epoch (metrics.jsonl)."""

    bundle: Path
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class MetaTrainer:
    """The outer loop's state (parameters, Meta-SGD rates, Adam) and its two operations."""

    def __init__(
        self,
        config: Config,
        prepared: Prepared,
        device: torch.device,
        *,
        max_tasks_per_pass: int = 1024,
    ) -> None:
        """``max_tasks_per_pass``: larger meta-batches are run in passes of at most this
        many tasks, their gradients summed (same result, bounded activation memory)."""
        self.config, self.device = config, device
        self.max_tasks_per_pass = max_tasks_per_pass
        torch.manual_seed(config.train.seed)
        self.model = PreferenceEstimator(config.model, prepared.features).to(device)
        self.fast = self.model.fast_names()
        self.params: Params = {
            k: v.to(device).requires_grad_() for k, v in init_params(self.model).items()
        }
        self.inner_lr: Params | None = None
        if config.meta.learn_inner_lr:
            self.inner_lr = {
                k: torch.full_like(self.params[k], config.meta.inner_lr).requires_grad_()
                for k in self.fast
            }
        self.optimizer = torch.optim.Adam(
            self.trainable, lr=config.train.outer_lr, weight_decay=config.train.weight_decay
        )
        self.tables = prepared.tables.to(device)
        self.train_tasks = prepared.tasks["train"].to(device)
        self.val_tasks = prepared.tasks["validation"].to(device)
        t = self.train_tasks
        self.global_mean = float(
            (t.support_ratings.sum() + t.query_ratings.sum())
            / (t.support_mask.sum() + t.query_mask.sum())
        )

    @property
    def trainable(self) -> list[Tensor]:
        return [*self.params.values(), *(self.inner_lr or {}).values()]

    @property
    def lr(self) -> float | Params:
        return self.inner_lr if self.inner_lr is not None else self.config.meta.inner_lr

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.train.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def meta_batches(self, epoch: int) -> list[Tensor]:
        """Seeded global meta-batches of epoch ``epoch``: index tensors (≤ B,) into tasks."""
        gen = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_tasks), generator=gen)
        cap = self.config.train.max_tasks_per_epoch
        if cap is not None:
            order = order[:cap]
        return list(order.split(self.config.train.meta_batch))

    def task_losses(self, indices: Tensor, buckets: int = 2) -> tuple[Tensor, Tensor]:
        """Post-adaptation query losses (B,) and inner losses (B, steps + 1) of ``indices``.

        The tasks are sorted by support size and run in ``buckets`` vmapped groups, each
        trimmed to its own longest support: the same sum, with less padding to compute.
        """
        sizes = self.train_tasks.support_mask[indices].sum(1)
        order = indices[sizes.argsort(stable=True)]
        meta, losses, inners = self.config.meta, [], []
        for part in order.tensor_split(min(buckets, len(order))):
            support, query = task_examples(self.train_tasks, self.tables, part)
            with self.autocast():
                _, per_task, inner = meta_loss(
                    self.model,
                    self.params,
                    trim(support),
                    trim(query),
                    steps=meta.inner_steps,
                    lr=self.lr,
                    first_order=meta.first_order,
                    fast=self.fast,
                )
            losses.append(per_task.float())
            inners.append(inner.float())
        return torch.cat(losses), torch.cat(inners)

    def step(
        self,
        indices: Tensor,
        *,
        denominator: int | None = None,
        reduce_grads: GradHook | None = None,
    ) -> dict[str, float]:
        """One outer update on tasks ``indices`` (n,): loss = Σ query losses / ``denominator``
        (default n), gradients (optionally reduced across ranks), clip, Adam.

        ``indices`` may be empty (a rank whose shard of a small batch is empty): its
        gradient is zero but it still joins ``reduce_grads``. Returns the local mean query
        loss, mean support loss before / after adaptation, and ``tasks`` = n.
        """
        indices = indices.to(self.device)
        denom = denominator or max(len(indices), 1)
        grads = [torch.zeros_like(p) for p in self.trainable]
        per_task, inner = torch.zeros(0), torch.zeros(0, 2)
        if len(indices):
            sizes = self.train_tasks.support_mask[indices].sum(1)
            ordered = indices[sizes.argsort(stable=True)]
            losses, inners = [], []
            for part in ordered.split(self.max_tasks_per_pass):
                part_losses, part_inner = self.task_losses(part)
                part_grads = torch.autograd.grad(part_losses.sum() / denom, self.trainable)
                for acc, g in zip(grads, part_grads, strict=True):
                    acc += g
                losses.append(part_losses.detach())
                inners.append(part_inner.detach())
            per_task, inner = torch.cat(losses).float(), torch.cat(inners).float()
        for p, g in zip(self.trainable, grads, strict=True):
            p.grad = g
        if reduce_grads is not None:
            reduce_grads(self.trainable)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.grad_clip)
        self.optimizer.step()
        n = len(indices)
        return {
            "loss": float(per_task.mean()) if n else 0.0,
            "support_before": float(inner[:, 0].mean()) if n else 0.0,
            "support_after": float(inner[:, -1].mean()) if n else 0.0,
            "tasks": float(n),
        }

    @torch.no_grad()
    def evaluate(
        self, tasks: TaskSet, chunk: int = 512, ctx: DistContext | None = None
    ) -> dict[str, float]:
        """Query MAE / RMSE before (0 steps) and after adaptation, over all query ratings.

        With ``ctx``, each rank evaluates a contiguous share of ``tasks`` and the sums are
        all-reduced, so every rank returns the same figures.
        """
        part = contiguous_range(len(tasks), ctx) if ctx is not None else slice(0, len(tasks))
        sums = torch.zeros(6, dtype=torch.float64)  # |e|, e² before; |e|, e² after; mean; n
        for start in range(part.start, part.stop, chunk):
            rows = slice(start, min(start + chunk, part.stop))
            sums += self._error_sums(*task_examples(tasks, self.tables, rows))
        if ctx is not None:
            sums = all_reduce_sum(sums, ctx)
        n = max(float(sums[5]), 1.0)
        return {
            "mae_before": float(sums[0] / n),
            "rmse_before": math.sqrt(float(sums[1] / n)),
            "mae_after": float(sums[2] / n),
            "rmse_after": math.sqrt(float(sums[3] / n)),
            "mae_global_mean": float(sums[4] / n),
        }

    def _error_sums(self, support: Examples, query: Examples) -> Tensor:
        """(6,) float64: Σ|e|, Σe² before and after adaptation, Σ|r - mean|, count."""
        sums = torch.zeros(6, dtype=torch.float64)
        support = trim(support)
        for i, steps in enumerate((0, self.config.meta.inner_steps)):
            with self.autocast():
                pred, _ = adapted_predictions(
                    self.model,
                    self.params,
                    support,
                    query.inputs,
                    steps=steps,
                    lr=self.lr,
                    fast=self.fast,
                )
            err = (pred.float() - query.ratings)[query.mask].double()
            sums[2 * i] += err.abs().sum().cpu()
            sums[2 * i + 1] += (err**2).sum().cpu()
        sums[4] += (query.ratings - self.global_mean)[query.mask].double().abs().sum().cpu()
        sums[5] += float(query.mask.sum())
        return sums

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters, Meta-SGD rates and Adam's moments as a flat name → tensor dict."""
        out = {f"param.{k}": v for k, v in self.params.items()}
        out.update({f"inner_lr.{k}": v for k, v in (self.inner_lr or {}).items()})
        for i, state in self.optimizer.state_dict()["state"].items():
            out.update({f"adam.{i}.{k}": torch.as_tensor(v) for k, v in state.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``state_tensors`` (``BundleError`` if names or shapes differ)."""
        with torch.no_grad():
            for prefix, group in (("param.", self.params), ("inner_lr.", self.inner_lr or {})):
                for k, v in group.items():
                    saved = tensors.get(prefix + k)
                    if saved is None or saved.shape != v.shape:
                        raise BundleError(f"checkpoint: {prefix}{k} is missing or misshapen")
                    v.copy_(saved)
        state: dict[int, dict[str, Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("adam."):
                _, i, key = name.split(".", 2)
                state.setdefault(int(i), {})[key] = (
                    value.to(self.device) if key != "step" else value
                )
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


def _clone(params: Params | None) -> Params | None:
    return None if params is None else {k: v.detach().clone() for k, v in params.items()}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, path)


def _run_epoch(
    trainer: MetaTrainer, epoch: int, progress: Progress, ctx: DistContext
) -> dict[str, Any]:
    """One epoch of seeded global meta-batches, this rank's shard of each, then validation.

    Per-batch sums (loss, support before / after, tasks) are all-reduced once at the end,
    so every rank reports the global figures of a single-process run.
    """
    batches = trainer.meta_batches(epoch)
    progress({"event": "epoch_start", "epoch": epoch, "batches": len(batches)})
    reduce = (lambda params: all_reduce_grads(params, ctx)) if ctx.enabled else None
    sums = torch.zeros(len(batches), 4, dtype=torch.float64)  # loss, before, after, tasks
    start = time.perf_counter()
    for i, indices in enumerate(batches):
        out = trainer.step(shard(indices, ctx), denominator=len(indices), reduce_grads=reduce)
        n = out["tasks"]
        sums[i] = torch.tensor(
            [out["loss"] * n, out["support_before"] * n, out["support_after"] * n, n]
        )
        fail_if_requested(ctx, i + 1)
        progress({"event": "batch", "epoch": epoch, "batch": i + 1, "loss": out["loss"]})
    sums = all_reduce_sum(sums, ctx)
    seconds = time.perf_counter() - start
    val = trainer.evaluate(trainer.val_tasks, ctx=ctx)
    tasks = float(sums[:, 3].sum())
    per_batch = sums[:, 1:3] / sums[:, 3:].clamp(min=1)
    return {
        "epoch": epoch,
        "train_loss": float(sums[:, 0].sum()) / max(tasks, 1),
        "train_support_before": float(per_batch[:, 0].mean()) if len(batches) else 0.0,
        "train_support_after": float(per_batch[:, 1].mean()) if len(batches) else 0.0,
        "val_mae_before": val["mae_before"],
        "val_mae_after": val["mae_after"],
        "val_rmse_after": val["rmse_after"],
        "val_mae_global_mean": val["mae_global_mean"],
        "seconds": seconds,
        "tasks_per_s": tasks / seconds if seconds > 0 else 0.0,
    }


@dataclass
class _RunState:
    """Early-stopping state and the best weights so far (what a checkpoint restores)."""

    state: dict[str, Any]
    history: list[dict[str, Any]]
    best: Params | None
    best_lr: Params | None


def _resume(trainer: MetaTrainer, ckpt: Path, config: Config, ctx: DistContext) -> _RunState:
    """Every rank loads the same checkpoint (so ``out`` must be on a filesystem all nodes
    share); ``BundleError`` if it does not fit the config or the ranks disagree."""
    found = ckpt.exists()
    if not all_agree(int(found), ctx):
        raise BundleError(f"{ckpt}: not every rank sees this checkpoint (use a shared --out)")
    if not found:
        return _RunState(_fresh_state(), [], _clone(trainer.params), _clone(trainer.inner_lr))
    tensors, saved = load_checkpoint(ckpt)
    if (
        saved.get("config", {}).get("model") != config.model.to_dict()
        or saved.get("config", {}).get("meta") != config.meta.to_dict()
    ):
        raise BundleError(f"{ckpt}: checkpoint was made with a different model/meta config")
    if not all_agree(int(saved["train_state"]["epoch"]), ctx):
        raise BundleError(f"{ckpt}: ranks read checkpoints of different epochs")
    trainer.load_state_tensors(tensors)
    dev = trainer.device
    best = {k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("best.")}
    best_lr = {k[14:]: v.to(dev) for k, v in tensors.items() if k.startswith("best_inner_lr.")}
    set_rng_state(saved["rng"])
    return _RunState(saved["train_state"], saved["history"], best, best_lr or None)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_epoch": 0, "best_mae": None, "bad_epochs": 0}


def _save_checkpoint(trainer: MetaTrainer, ckpt: Path, config: Config, run: _RunState) -> None:
    tensors = trainer.state_tensors()
    tensors.update({f"best.{k}": v for k, v in (run.best or {}).items()})
    tensors.update({f"best_inner_lr.{k}": v for k, v in (run.best_lr or {}).items()})
    meta = {"train_state": run.state, "history": run.history, "config": config.to_dict()}
    save_checkpoint(ckpt, tensors, {**meta, "rng": rng_state()})


def train(
    config: Config,
    prepared: Prepared,
    out: Path | str,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
    ctx: DistContext | None = None,
) -> TrainResult:
    """Meta-train on ``prepared.tasks["train"]``; write ``out/metrics.jsonl``,
    ``out/checkpoint/`` (every epoch) and the best model's bundle ``out/model/``.

    ``ctx`` (from ``melu.distributed.init_distributed``) makes this one rank of a
    data-parallel run on ``ctx.device``: shards of every meta-batch, summed gradients,
    sharded validation; only rank 0 writes, and every rank returns once the bundle exists.
    Without it, one process on ``device`` (default ``config.train.device``).
    """
    out = Path(out)
    ctx = ctx or DistContext(device=resolve_device(device or config.train.device))
    report = progress or (lambda _event: None)
    trainer = MetaTrainer(config, prepared, ctx.device)
    ckpt = out / "checkpoint"
    if resume:
        run = _resume(trainer, ckpt, config, ctx)
        if run.state["epoch"]:
            report({"event": "resumed", "epoch": run.state["epoch"]})
    else:
        run = _RunState(_fresh_state(), [], _clone(trainer.params), _clone(trainer.inner_lr))
    broadcast_(trainer.trainable, ctx)  # identical start on every rank, whatever happened
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    for epoch in range(run.state["epoch"] + 1, config.train.epochs + 1):
        if run.state["bad_epochs"] >= config.train.patience:
            break
        row = _run_epoch(trainer, epoch, report, ctx)
        run.history.append(row)
        if run.state["best_mae"] is None or row["val_mae_after"] < run.state["best_mae"]:
            run.state.update(best_mae=row["val_mae_after"], best_epoch=epoch, bad_epochs=0)
            run.best, run.best_lr = _clone(trainer.params), _clone(trainer.inner_lr)
        else:
            run.state["bad_epochs"] += 1
        run.state["epoch"] = epoch
        if ctx.is_main:
            _save_checkpoint(trainer, ckpt, config, run)
            _write_jsonl(out / "metrics.jsonl", run.history)
        report({"event": "epoch_end", **row, "best_epoch": run.state["best_epoch"]})
    best_row = next((r for r in run.history if r["epoch"] == run.state["best_epoch"]), {})
    metrics = {"best_epoch": run.state["best_epoch"], "epochs_run": run.state["epoch"], **best_row}
    bundle = out / "model"
    if ctx.is_main:
        bundle = save_bundle(
            bundle,
            config=config,
            features=prepared.features,
            params=run.best or trainer.params,
            catalog=prepared.catalog,
            tables=prepared.tables,
            metrics=metrics,
            inner_lr=run.best_lr,
            fingerprint=prepared.fingerprint,
        )
    barrier(ctx)
    return TrainResult(bundle, run.state["best_epoch"], run.history, metrics)
