"""Meta-training: Adam on the meta-learned initialisation, early stopping, checkpoints.

``MetaTrainer`` knows the model only through ``melu.maml``: ``meta_batches(epoch)`` draws
the seeded global meta-batches (index tensors into the training TaskSet), ``step(indices)``
runs one outer update on them. The two are separate so a data-parallel driver can give
each rank a disjoint shard of every global batch: it calls ``step(shard, denominator=B,
reduce_grads=...)`` and sums the gradients across ranks before the optimiser step.

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
from melu.errors import BundleError, ConfigError
from melu.maml import adapted_predictions, meta_loss, task_examples, trim
from melu.model import Params, PreferenceEstimator, init_params
from melu.prepare import Prepared
from melu.tasks import TaskSet

Progress = Callable[[dict[str, Any]], None]
GradHook = Callable[[list[Tensor]], None]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) → CUDA when present, else CPU; ``cuda`` requires a GPU."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


@dataclass
class TrainResult:
    """Where the bundle went, the best epoch, and one dict per epoch (metrics.jsonl)."""

    bundle: Path
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class MetaTrainer:
    """The outer loop's state (parameters, Meta-SGD rates, Adam) and its two operations."""

    def __init__(self, config: Config, prepared: Prepared, device: torch.device) -> None:
        self.config, self.device = config, device
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
        """One outer update on tasks ``indices``: loss = Σ query losses / ``denominator``
        (default len(indices)), gradients (optionally reduced across ranks), clip, Adam."""
        per_task, inner = self.task_losses(indices.to(self.device))
        loss = per_task.float().sum() / (denominator or len(indices))
        grads = torch.autograd.grad(loss, self.trainable)
        for p, g in zip(self.trainable, grads, strict=True):
            p.grad = g
        if reduce_grads is not None:
            reduce_grads(self.trainable)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.grad_clip)
        self.optimizer.step()
        inner = inner.detach().float()
        return {
            "loss": float(per_task.detach().float().mean()),
            "support_before": float(inner[:, 0].mean()),
            "support_after": float(inner[:, -1].mean()),
        }

    @torch.no_grad()
    def evaluate(self, tasks: TaskSet, chunk: int = 512) -> dict[str, float]:
        """Query MAE / RMSE before (0 steps) and after adaptation, over all query ratings."""
        sums = torch.zeros(5, dtype=torch.float64)  # |e|, e² before; |e|, e² after; mean
        count = 0.0
        for start in range(0, len(tasks), chunk):
            support, query = task_examples(tasks, self.tables, slice(start, start + chunk))
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
            count += float(query.mask.sum())
            mean_err = (query.ratings - self.global_mean)[query.mask].double()
            sums[4] += mean_err.abs().sum().cpu()
        n = max(count, 1.0)
        return {
            "mae_before": float(sums[0] / n),
            "rmse_before": math.sqrt(float(sums[1] / n)),
            "mae_after": float(sums[2] / n),
            "rmse_after": math.sqrt(float(sums[3] / n)),
            "mae_global_mean": float(sums[4] / n),
        }

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


def _run_epoch(trainer: MetaTrainer, epoch: int, progress: Progress) -> dict[str, Any]:
    batches = trainer.meta_batches(epoch)
    progress({"event": "epoch_start", "epoch": epoch, "batches": len(batches)})
    start, losses, inner, tasks = time.perf_counter(), [], [], 0
    for i, indices in enumerate(batches):
        out = trainer.step(indices)
        losses.append(out["loss"] * len(indices))
        inner.append((out["support_before"], out["support_after"]))
        tasks += len(indices)
        progress({"event": "batch", "epoch": epoch, "batch": i + 1, "loss": out["loss"]})
    seconds = time.perf_counter() - start
    val = trainer.evaluate(trainer.val_tasks)
    return {
        "epoch": epoch,
        "train_loss": sum(losses) / max(tasks, 1),
        "train_support_before": sum(a for a, _ in inner) / max(len(inner), 1),
        "train_support_after": sum(b for _, b in inner) / max(len(inner), 1),
        "val_mae_before": val["mae_before"],
        "val_mae_after": val["mae_after"],
        "val_rmse_after": val["rmse_after"],
        "val_mae_global_mean": val["mae_global_mean"],
        "seconds": seconds,
        "tasks_per_s": tasks / seconds if seconds > 0 else 0.0,
    }


def train(
    config: Config,
    prepared: Prepared,
    out: Path | str,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Meta-train on ``prepared.tasks["train"]``; write ``out/metrics.jsonl``,
    ``out/checkpoint/`` (every epoch) and the best model's bundle ``out/model/``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda _event: None)
    trainer = MetaTrainer(config, prepared, resolve_device(device or config.train.device))
    ckpt = out / "checkpoint"
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_mae": None, "bad_epochs": 0}
    history: list[dict[str, Any]] = []
    best, best_lr = _clone(trainer.params), _clone(trainer.inner_lr)
    if resume and ckpt.exists():
        tensors, saved = load_checkpoint(ckpt)
        if (
            saved.get("config", {}).get("model") != config.model.to_dict()
            or saved.get("config", {}).get("meta") != config.meta.to_dict()
        ):
            raise BundleError(f"{ckpt}: checkpoint was made with a different model/meta config")
        trainer.load_state_tensors(tensors)
        best = {k[5:]: v.to(trainer.device) for k, v in tensors.items() if k.startswith("best.")}
        best_lr = {k[13:]: v for k, v in tensors.items() if k.startswith("best_inner_lr.")} or None
        state, history = saved["train_state"], saved["history"]
        set_rng_state(saved["rng"])
        report({"event": "resumed", "epoch": state["epoch"]})
    for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
        if state["bad_epochs"] >= config.train.patience:
            break
        row = _run_epoch(trainer, epoch, report)
        history.append(row)
        if state["best_mae"] is None or row["val_mae_after"] < state["best_mae"]:
            state.update(best_mae=row["val_mae_after"], best_epoch=epoch, bad_epochs=0)
            best, best_lr = _clone(trainer.params), _clone(trainer.inner_lr)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        tensors = trainer.state_tensors()
        tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
        tensors.update({f"best_inner_lr.{k}": v for k, v in (best_lr or {}).items()})
        save_checkpoint(
            ckpt,
            tensors,
            {
                "train_state": state,
                "history": history,
                "config": config.to_dict(),
                "rng": rng_state(),
            },
        )
        _write_jsonl(out / "metrics.jsonl", history)
        report({"event": "epoch_end", **row, "best_epoch": state["best_epoch"]})
    best_row = next((r for r in history if r["epoch"] == state["best_epoch"]), {})
    metrics = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], **best_row}
    bundle = save_bundle(
        out / "model",
        config=config,
        features=prepared.features,
        params=best or trainer.params,
        catalog=prepared.catalog,
        tables=prepared.tables,
        metrics=metrics,
        inner_lr=best_lr,
        fingerprint=prepared.fingerprint,
    )
    return TrainResult(bundle, state["best_epoch"], history, metrics)
