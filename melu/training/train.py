"""Meta-training: epochs, validation, early stopping, checkpoints, the bundle.

``train`` drives a ``melu.training.meta_trainer.MetaTrainer``: each epoch it runs the seeded global
meta-batches (under ``torchrun`` each rank takes its shard and the gradients are summed,
see ``melu.training.distributed``), evaluates the validation users' query MAE before (0 steps) and
after adaptation, keeps the best weights, stops on ``patience``, checkpoints every epoch
atomically (``out/checkpoint``; ``resume=True`` continues bit-for-bit), writes
``metrics.jsonl`` and finally the model bundle (``out/model``). Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from melu.atomic import recover, write_text_atomic
from melu.bundle import save_bundle
from melu.config import Config
from melu.errors import BundleError, TrainingDiverged
from melu.model.estimator import Params
from melu.model.maml import inner_rates
from melu.prepare import Prepared
from melu.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from melu.training.distributed import (
    DistContext,
    all_agree,
    all_reduce_grads,
    all_reduce_sum,
    barrier,
    broadcast_,
    fail_if_requested,
    resolve_device,
    shard,
)
from melu.training.meta_trainer import MetaTrainer
from melu.training.rank_train import train_ranking

__all__ = ["MetaTrainer", "TrainResult", "train"]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """Where the bundle went, the best epoch, and one dict per epoch (metrics.jsonl)."""

    bundle: Path
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def _clone(params: Params | None) -> Params | None:
    return None if params is None else {k: v.detach().clone() for k, v in params.items()}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Strict JSON lines (``allow_nan=False``: a bare NaN is not JSON), replaced atomically."""
    write_text_atomic(
        path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
    )


def _run_epoch(
    trainer: MetaTrainer, epoch: int, progress: Progress, ctx: DistContext
) -> dict[str, Any]:
    """One epoch of seeded global meta-batches, this rank's shard of each, then validation.

    Per-batch sums (loss, support before / after, tasks) are all-reduced once at the end,
    so every rank reports the global figures of a single-process run.
    """
    trainer.begin_epoch(epoch)
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


_WATCHED = ("train_loss", "train_support_after", "val_mae_after")


def _check_finite(row: dict[str, Any], trainer: MetaTrainer, config: Config) -> None:
    """``TrainingDiverged`` naming the epoch, the figure and the likely cause, if any loss,
    validation figure or weight is NaN or infinite (before anything of it is saved)."""
    bad = [k for k in _WATCHED if not math.isfinite(row[k])]
    bad += ["weights"] if not all(bool(p.isfinite().all()) for p in trainer.trainable) else []
    if bad:
        figures = ", ".join(f"{k} {row[k]}" for k in _WATCHED)
        raise TrainingDiverged(
            f"epoch {row['epoch']}: training diverged (non-finite {', '.join(bad)}; {figures}); "
            f"the learning rates are the likely cause (outer lr {config.train.outer_lr:g}, "
            f"inner lr {config.meta.inner_lr:g}): lower them and rerun. "
            "No checkpoint or model was written for this epoch"
        )


@dataclass
class _RunState:
    """Early-stopping state and the best weights so far (what a checkpoint restores)."""

    state: dict[str, Any]
    history: list[dict[str, Any]]
    best: Params | None
    best_lr: Params | None


# TrainConfig fields a resumed run may change: how long to go on, where to compute, and
# (``rank_*``) how the ranking head is trained: it is trained after the rating part from
# its best weights and is never in a checkpoint.
RESUMABLE_CHANGES = ("epochs", "patience", "device")


def _resumable(name: str) -> bool:
    return name in RESUMABLE_CHANGES or name.startswith("rank_")


def _check_resumable(ckpt: Path, saved: dict[str, Any], config: Config, fingerprint: str) -> None:
    """``BundleError`` naming what differs if the checkpoint was made under another data
    protocol, data files, model, inner loop or outer-loop setting."""
    old = saved.get("config", {})
    for section in ("data", "model", "meta", "train"):
        now = getattr(config, section).to_dict()
        before = old.get(section, {})
        if section == "train":
            now = {k: v for k, v in now.items() if not _resumable(k)}
            before = {k: v for k, v in before.items() if not _resumable(k)}
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        if changed:
            raise BundleError(
                f"{ckpt}: cannot resume: {section} setting(s) {', '.join(changed)} differ from "
                "the checkpoint's; rerun with the same flags or use a new --out"
            )
    if saved.get("data_fingerprint", fingerprint) != fingerprint:
        raise BundleError(f"{ckpt}: cannot resume: the data files changed since this checkpoint")


def _check_best(best: Params, params: Params, prefix: str) -> None:
    """The best-so-far weights name and shape exactly the model's (or are absent)."""
    if best and (set(best) != set(params) or any(best[k].shape != params[k].shape for k in best)):
        raise BundleError(f"{prefix}* do not match the model's parameters")


def _resume(
    trainer: MetaTrainer, ckpt: Path, config: Config, ctx: DistContext, fingerprint: str
) -> _RunState:
    """Every rank loads the same checkpoint (so ``out`` must be on a filesystem all nodes
    share); ``BundleError`` if it does not fit the config or the ranks disagree."""
    found = recover(ckpt).is_dir()
    if not all_agree(int(found), ctx):
        raise BundleError(f"{ckpt}: not every rank sees this checkpoint (use a shared --out)")
    if not found:
        raise BundleError(
            f"{ckpt}: nothing to resume (no checkpoint here); run without --resume to start over"
        )
    tensors, saved = load_checkpoint(ckpt)  # digests and every field checked
    _check_resumable(ckpt, saved, config, fingerprint)
    if not all_agree(int(saved["train_state"]["epoch"]), ctx):
        raise BundleError(f"{ckpt}: ranks read checkpoints of different epochs")
    dev = trainer.device
    best = {k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("best.")}
    best_lr = {k[14:]: v.to(dev) for k, v in tensors.items() if k.startswith("best_inner_lr.")}
    try:
        _check_best(best, trainer.params, "best.")
        _check_best(best_lr, trainer.inner_lr or {}, "best_inner_lr.")
        trainer.load_state_tensors(tensors)
    except BundleError as exc:
        raise BundleError(f"{ckpt}/tensors.safetensors: {exc}") from exc
    try:
        set_rng_state(saved["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{ckpt}/state.json: unreadable RNG state ({exc})") from exc
    return _RunState(saved["train_state"], saved["history"], best, best_lr or None)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_epoch": 0, "best_mae": None, "bad_epochs": 0}


def _save_checkpoint(
    trainer: MetaTrainer, ckpt: Path, config: Config, run: _RunState, fingerprint: str
) -> None:
    tensors = trainer.state_tensors()
    tensors.update({f"best.{k}": v for k, v in (run.best or {}).items()})
    tensors.update({f"best_inner_lr.{k}": v for k, v in (run.best_lr or {}).items()})
    meta = {
        "train_state": run.state,
        "history": run.history,
        "config": config.to_dict(),
        "data_fingerprint": fingerprint,
    }
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

    ``ctx`` (from ``melu.training.distributed.init_distributed``) makes this one rank of a
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
        run = _resume(trainer, ckpt, config, ctx, prepared.fingerprint)
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
        _check_finite(row, trainer, config)
        run.history.append(row)
        if run.state["best_mae"] is None or row["val_mae_after"] < run.state["best_mae"]:
            run.state.update(best_mae=row["val_mae_after"], best_epoch=epoch, bad_epochs=0)
            run.best, run.best_lr = _clone(trainer.params), _clone(trainer.inner_lr)
        else:
            run.state["bad_epochs"] += 1
        run.state["epoch"] = epoch
        if ctx.is_main:
            _save_checkpoint(trainer, ckpt, config, run, prepared.fingerprint)
            _write_jsonl(out / "metrics.jsonl", run.history)
        report({"event": "epoch_end", **row, "best_epoch": run.state["best_epoch"]})
    best_row = next((r for r in run.history if r["epoch"] == run.state["best_epoch"]), {})
    metrics = {"best_epoch": run.state["best_epoch"], "epochs_run": run.state["epoch"], **best_row}
    params = _clone(run.best or trainer.params) or {}
    if trainer.model.ranking:  # the ranking head, on top of the best rating part
        ranked = train_ranking(
            config, trainer.model, params, prepared, ctx.device,
            inner_rates(config.meta, run.best_lr), report,
        )  # fmt: skip
        params.update(ranked.params)
        metrics["rank_best_epoch"] = ranked.best_epoch
        metrics["rank_val_ndcg@10"] = ranked.settings["kept"]["val_ndcg@10"]
        metrics["rank_ease_lambda"] = ranked.settings["ease_lambda"]
        metrics["rank_liked_lambda"] = ranked.settings["liked_lambda"]
        alpha, beta = ranked.settings["walk_alpha_beta"]
        metrics["rank_walk_alpha"], metrics["rank_walk_beta"] = alpha, beta
        if "neighbour_alpha_keep" in ranked.settings:
            alpha, keep = ranked.settings["neighbour_alpha_keep"]
            metrics["rank_neighbour_alpha"], metrics["rank_neighbour_keep"] = alpha, keep
        if ctx.is_main:
            _write_jsonl(out / "rank_metrics.jsonl", ranked.history)
    bundle = out / "model"
    if ctx.is_main:
        bundle = save_bundle(
            bundle,
            config=config,
            features=prepared.features,
            params=params,
            catalog=prepared.catalog,
            tables=prepared.tables,
            metrics=metrics,
            inner_lr=run.best_lr,
            fingerprint=prepared.fingerprint,
        )
    barrier(ctx)
    return TrainResult(bundle, run.state["best_epoch"], run.history, metrics)
