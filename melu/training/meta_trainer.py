"""MetaTrainer: the outer loop's state (parameters, Meta-SGD rates, Adam) and its steps.

It knows the model only through ``melu.model.maml``: ``meta_batches(epoch)`` draws the seeded
global meta-batches (index tensors into the training TaskSet) and ``step(indices)`` runs
one outer update on them. The two are separate so a data-parallel driver
(``melu.training.train.train`` under ``torchrun``) can give each rank a disjoint shard of every
global batch: it calls ``step(shard, denominator=B, reduce_grads=...)``, which sums the
gradients across ranks before clipping and Adam.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from melu.config import Config
from melu.errors import BundleError
from melu.evaluation.metrics import error_sums
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.examples import task_rows
from melu.model.linear import linear_applies
from melu.model.maml import Examples, Kernel, Lr, inner_rates, meta_loss, task_examples, trim
from melu.model.predict import predict_examples
from melu.prepare import Prepared
from melu.tasks import TaskSet
from melu.training.checkpoint import adam_state
from melu.training.distributed import (
    DistContext,
    all_reduce_sum,
    contiguous_range,
)
from melu.training.episodes import episodes, hidden_ids, hide_items
from melu.training.factor_start import init_item_factors
from melu.training.packed import packed_examples

GradHook = Callable[[list[Tensor]], None]


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
        self.model = PreferenceEstimator(config.model, prepared.features)
        self.fast = self.model.fast_names()
        # the user offsets alone (the default model): their inner gradient in closed form
        self.kernel: Kernel = "linear" if linear_applies(self.model, self.fast) else "batched"
        self.params: Params = {
            k: v.requires_grad_()
            for k, v in self.model.init_params(device=device, head=False).items()
        }
        self.inner_lr: Params | None = None
        if config.meta.learn_inner_lr:
            self.inner_lr = {
                k: torch.full_like(self.params[k], config.meta.inner_lr).requires_grad_()
                for k in self.fast
            }
        self.optimizer = torch.optim.Adam(
            self.trainable,
            lr=config.train.outer_lr,
            weight_decay=config.train.weight_decay,
            fused=True,  # one kernel for all parameters, not ~10 ops per parameter
        )
        self.tables = prepared.tables.to(device)
        self.train_ratings = prepared.train_ratings
        if config.model.factors and self.model.id_field is not None:
            with torch.no_grad():
                init_item_factors(self.model, self.params, prepared)
        self.train_tasks = prepared.tasks["train"].to(device)
        self.hidden: Tensor | None = None  # item ids hidden this epoch (train.hide_items)
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
    def lr(self) -> Lr:
        return inner_rates(self.config.meta, self.inner_lr)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.train.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def begin_epoch(self, epoch: int) -> None:
        """With ``train.episodes="all"``, draw this epoch's tasks from all training ratings
        (seeded by the training seed and the epoch, so every rank draws the same)."""
        seed = self.config.train.seed * 1_000_003 + epoch
        if self.config.train.episodes == "all":
            tasks = episodes(self.train_ratings, self.tables.user_ids, self.config.data, seed)
            self.train_tasks = tasks.to(self.device)
        share, field = self.config.train.hide_items, self.model.id_field
        if share > 0 and field is not None:
            size = int(self.tables.items[field].max()) + 1
            self.hidden = hidden_ids(size, share, seed, self.device)

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
        trimmed to its own longest support and cut where the padded rows are fewest
        (``size_split``): the same sum, with less padding to compute.
        With the linear kernel (the default model) they run in one pass over their real
        rows instead (``melu.training.packed``): no padding in the network at all.
        """
        if self.kernel == "linear":
            return self._packed_losses(indices)
        sizes, rank = self.train_tasks.support_mask[indices].sum(1).sort(stable=True)
        order, cuts = indices[rank], size_split(sizes, buckets)
        meta, losses, inners = self.config.meta, [], []
        hidden, field = self.hidden, self.model.id_field
        everything = task_examples(self.train_tasks, self.tables, order)  # gathered once
        if hidden is not None and field is not None:
            everything = tuple(  # type: ignore[assignment]
                e._replace(inputs=hide_items(e.inputs, field, hidden)) for e in everything
            )
        bounds = [0, *cuts, len(order)]
        for start, stop in pairwise(bounds):
            support, query = (task_rows(e, start, stop) for e in everything)
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
                    kernel=self.kernel,
                )
            losses.append(per_task.float())
            inners.append(inner.float())
        return torch.cat(losses), torch.cat(inners)

    def _packed_losses(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``task_losses`` of the linear kernel: one packed pass over ``indices`` (B,)."""
        meta = self.config.meta
        with self.autocast():
            support, query = packed_examples(
                self.model, self.params, self.train_tasks, self.tables, indices, self.hidden
            )
            _, per_task, inner = meta_loss(
                self.model, self.params, support, query, steps=meta.inner_steps, lr=self.lr,
                first_order=meta.first_order, fast=self.fast, kernel="linear",
            )  # fmt: skip
        return per_task.float(), inner.float()

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
        grads: list[Tensor] | None = None  # the first pass's gradients, later passes added
        per_task, inner = torch.zeros(0), torch.zeros(0, 2)
        if len(indices):
            sizes = self.train_tasks.support_mask[indices].sum(1)
            ordered = indices[sizes.argsort(stable=True)]
            losses, inners = [], []
            for part in ordered.split(self.max_tasks_per_pass):
                part_losses, part_inner = self.task_losses(part)
                part_grads = torch.autograd.grad(part_losses.sum() / denom, self.trainable)
                if grads is None:
                    grads = _distinct(part_grads)
                else:
                    torch._foreach_add_(grads, list(part_grads))
                losses.append(part_losses.detach())
                inners.append(part_inner.detach())
            per_task, inner = torch.cat(losses).float(), torch.cat(inners).float()
        if grads is None:  # an empty shard still joins the reduction, with zeros
            grads = [torch.zeros_like(p) for p in self.trainable]
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
        with self.autocast():
            preds = predict_examples(
                self.model, self.params, trim(support), query.inputs,
                steps=[0, self.config.meta.inner_steps], lr=self.lr, fast=self.fast,
            )  # fmt: skip
        before, after = (error_sums(p.float(), query.ratings, query.mask) for p in preds)
        mean = torch.full_like(query.ratings, self.global_mean)
        spread = error_sums(mean, query.ratings, query.mask)
        return torch.cat([before[:2], after[:2], spread[:1], spread[2:]])

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters, Meta-SGD rates and Adam's moments as a flat name → tensor dict."""
        out = {f"param.{k}": v for k, v in self.params.items()}
        out.update({f"inner_lr.{k}": v for k, v in (self.inner_lr or {}).items()})
        for i, state in self.optimizer.state_dict()["state"].items():
            out.update({f"adam.{i}.{k}": torch.as_tensor(v) for k, v in state.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``state_tensors`` (``BundleError`` if names or shapes differ; checked
        before anything is copied)."""
        adam = adam_state(tensors, self.trainable)
        with torch.no_grad():
            for prefix, group in (("param.", self.params), ("inner_lr.", self.inner_lr or {})):
                for k, v in group.items():
                    saved = tensors.get(prefix + k)
                    if saved is None or saved.shape != v.shape:
                        raise BundleError(f"checkpoint: {prefix}{k} is missing or misshapen")
                    v.copy_(saved)
        state = {
            i: {k: v.to(self.device) if k != "step" else v for k, v in entry.items()}
            for i, entry in adam.items()
        }
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})


def size_split(sizes: Tensor, buckets: int) -> list[int]:
    """Where to cut ascending support ``sizes`` (B,) into at most ``buckets`` runs so that
    the padded rows Σ (run length × its largest size) are fewest (the cut indices, ascending).

    A dynamic programme over run ends, one (B + 1, B + 1) min per run: ``pad[i, j]`` is the
    run sizes[i:j] padded (0 when empty, so fewer runs are allowed; never i > j)."""
    n = len(sizes)
    ends = torch.arange(n + 1)
    pad = ((ends - ends[:, None]) * torch.cat([sizes.new_zeros(1), sizes])).double()
    pad[ends[:, None] > ends] = math.inf
    cost, back = pad.new_full((n + 1,), math.inf), []
    cost[0] = 0.0  # cost[j]: the fewest padded rows of sizes[:j] in the runs so far
    for _ in range(max(buckets, 1)):
        cost, start = (cost[:, None] + pad).min(0)
        back.append(start.tolist())
    cuts, j = [], n
    for start_of in reversed(back):
        j = start_of[j]
        cuts.append(j)
    return sorted({c for c in cuts if 0 < c < n})


def _distinct(grads: tuple[Tensor, ...]) -> list[Tensor]:
    """``grads`` with any tensor whose memory an earlier one already holds copied (autograd
    may hand two leaves one buffer), so in-place clipping scales each gradient once."""
    seen: set[int] = set()
    out = []
    for g in grads:
        ptr = g.untyped_storage().data_ptr()
        out.append(g.clone() if ptr in seen else g)
        seen.add(ptr)
    return out
