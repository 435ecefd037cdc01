"""Scenarios and per-user tasks: the support/query protocol of DESIGN.md, vectorised.

A *task* is one user's ratings on one scenario's item set, split into a support set (what
the user told us) and a query set (what we must predict). A ``TaskSet`` stores all tasks of
a scenario as padded arrays with masks, so a meta-batch is one gather, never a Python loop.

Scenarios (MeLU's four, plus training and validation):

- ``train``: train users × existing items, minus each user's held-out warm query; the
  meta-training tasks (query up to ``query_size`` from the remaining ratings).
- ``warm``: the same users, support = their training ratings, query = the held-out ratings.
- ``validation``: validation users × existing items (early stopping and tuning).
- ``user_cold``: test users × existing items.
- ``item_cold``: train users × new items.
- ``user_item_cold``: test users × new items.

Which users are train/validation/test and which items are new is decided in ``melu.splits``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from melu.config import DataConfig
from melu.errors import DataError
from melu.splits import new_item_mask as new_item_mask  # re-exported for melu.prepare
from melu.splits import split_users as split_users

SCENARIOS = ("train", "validation", "warm", "user_cold", "item_cold", "user_item_cold")
EVAL_SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")


@dataclass
class TaskSet:
    """All tasks of one scenario as padded arrays (T tasks, S support slots, Q query slots).

    ``user_rows`` (T,) rows into ``FeatureTables.users``; ``user_ids`` (T,) the data set's
    ids; ``support_items`` (T, S) rows into ``FeatureTables.items``; ``support_ratings``
    (T, S); ``support_mask`` (T, S) true on real rows; ``query_*`` likewise (T, Q).
    Padding slots hold item row 0 and rating 0 and are masked out everywhere.
    """

    user_rows: Tensor
    user_ids: Tensor
    support_items: Tensor
    support_ratings: Tensor
    support_mask: Tensor
    query_items: Tensor
    query_ratings: Tensor
    query_mask: Tensor

    def __len__(self) -> int:
        return int(self.user_rows.shape[0])

    def arrays(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, index: Tensor | np.ndarray | slice) -> TaskSet:
        """Tasks at ``index`` (a view for slices, a copy otherwise)."""
        return TaskSet(**{k: v[index] for k, v in self.arrays().items()})

    def to(self, device: torch.device | str) -> TaskSet:
        return TaskSet(**{k: v.to(device) for k, v in self.arrays().items()})

    def rated_rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every real row, support then query, flat: (user_rows, item_rows, ratings), each (N,)."""
        users, items, ratings = [], [], []
        for mask, item, rating in (
            (self.support_mask, self.support_items, self.support_ratings),
            (self.query_mask, self.query_items, self.query_ratings),
        ):
            mask = mask.bool()
            users.append(self.user_rows.long().unsqueeze(1).expand(mask.shape)[mask])
            items.append(item.long()[mask])
            ratings.append(rating.float()[mask])
        return torch.cat(users), torch.cat(items), torch.cat(ratings)

    def support_sizes(self) -> Tensor:
        return self.support_mask.sum(1)

    def with_support_size(self, n: int, seed: int) -> TaskSet:
        """The same tasks keeping a seeded random ``n`` of each support (tasks with fewer
        support ratings keep all of theirs). Used for the fixed-support cold-start curves."""
        gen = torch.Generator().manual_seed(seed)
        keys = torch.rand(self.support_mask.shape, generator=gen)
        keys = torch.where(self.support_mask.cpu(), keys, torch.full_like(keys, 2.0))
        order = keys.argsort(dim=1)[:, :n].to(self.support_mask.device)
        take = lambda t: torch.gather(t, 1, order)  # noqa: E731
        return TaskSet(
            self.user_rows,
            self.user_ids,
            take(self.support_items),
            take(self.support_ratings),
            take(self.support_mask),
            self.query_items,
            self.query_ratings,
            self.query_mask,
        )

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, value in self.arrays().items():
            h.update(name.encode())
            h.update(value.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def scatter_padded(
    task: np.ndarray, slot: np.ndarray, take: np.ndarray, items: np.ndarray, ratings: np.ndarray,
    n_tasks: int, width: int, item_dtype: type = np.int32,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Scatter the ``take`` rows of flat (task, slot, item, rating) arrays into padded
    (n_tasks, width) item rows, ratings (float32) and mask (padding: item 0, rating 0)."""
    item_arr: np.ndarray = np.zeros((n_tasks, width), dtype=item_dtype)
    rating_arr = np.zeros((n_tasks, width), dtype=np.float32)
    mask_arr = np.zeros((n_tasks, width), dtype=bool)
    t, s = task[take], slot[take]
    item_arr[t, s], rating_arr[t, s], mask_arr[t, s] = items[take], ratings[take], True
    return torch.from_numpy(item_arr), torch.from_numpy(rating_arr), torch.from_numpy(mask_arr)


def _order_within_users(rows: pd.DataFrame, config: DataConfig, salt: int) -> pd.DataFrame:
    """Rows sorted by user, then by query priority; adds ``pos`` (0 = first query row)."""
    rows = rows.sort_values(["user_id", "item_id"], kind="stable")
    if config.query_order == "time":
        key = -rows["timestamp"].to_numpy(dtype=np.float64)  # newest first
    else:
        key = np.random.default_rng([config.seed, salt]).random(len(rows))
    order = np.lexsort((rows["item_id"].to_numpy(), key, rows["user_id"].to_numpy()))
    rows = rows.iloc[order].reset_index(drop=True)
    rows["pos"] = rows.groupby("user_id", sort=False).cumcount().to_numpy()
    return rows


def _eligible(rows: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    counts = rows.groupby("user_id")["item_id"].transform("size")
    return rows[(counts >= config.min_ratings) & (counts <= config.max_ratings)]


def _pack(
    rows: pd.DataFrame,
    is_query: np.ndarray,
    slot: np.ndarray,
    is_support: np.ndarray,
    user_row: dict[str, np.ndarray],
    item_row: pd.Series,
    query_size: int,
) -> TaskSet:
    """Scatter ordered rows into padded (T, S) / (T, Q) arrays. No loop over rows."""
    users, task = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    n_tasks = len(users)
    items = item_row.loc[rows["item_id"].to_numpy()].to_numpy(dtype=np.int32)
    ratings = rows["rating"].to_numpy(dtype=np.float32)
    width = int(slot[is_support].max() + 1) if is_support.any() else 0
    out: dict[str, Tensor] = {}
    for prefix, take, size in (("support", is_support, width), ("query", is_query, query_size)):
        item_arr = np.zeros((n_tasks, size), dtype=np.int32)
        rating_arr = np.zeros((n_tasks, size), dtype=np.float32)
        mask_arr = np.zeros((n_tasks, size), dtype=bool)
        t, s = task[take], slot[take]
        item_arr[t, s], rating_arr[t, s], mask_arr[t, s] = items[take], ratings[take], True
        out[f"{prefix}_items"] = torch.from_numpy(item_arr)
        out[f"{prefix}_ratings"] = torch.from_numpy(rating_arr)
        out[f"{prefix}_mask"] = torch.from_numpy(mask_arr)
    sorter = np.searchsorted(user_row["ids"], users)
    return TaskSet(
        user_rows=torch.from_numpy(user_row["rows"][sorter].astype(np.int32)),
        user_ids=torch.from_numpy(users.astype(np.int64)),
        **out,
    )


def _train_and_warm(
    warm_rows: pd.DataFrame,
    config: DataConfig,
    user_row: dict[str, np.ndarray],
    item_row: pd.Series,
) -> tuple[TaskSet, TaskSet]:
    """The train users' tasks on existing items (``warm_rows``, ordered by
    ``_order_within_users``): the first ``query_size`` of each user are held out as the warm
    query; the rest make the meta-training task (query up to ``query_size``, support ≥
    ``min_support``). Warm tasks are only for users who got a meta-training task."""
    q = config.query_size
    pos = warm_rows["pos"].to_numpy()
    held = pos < q
    # meta-training tasks: the non-held-out ratings, query = up to q of them, support ≥ min
    pool = warm_rows[~held].copy()
    pool["pos"] = pos[~held] - q
    n_pool = pool.groupby("user_id")["pos"].transform("size").to_numpy()
    q_user = np.minimum(q, n_pool - config.min_support)
    pool_pos = pool["pos"].to_numpy()
    keep = q_user >= 1
    is_query = keep & (pool_pos < q_user)
    slot = np.where(is_query, pool_pos, pool_pos - q_user)
    is_support = keep & ~is_query & (slot < config.max_support)
    train = _pack(pool[keep], is_query[keep], slot[keep], is_support[keep], user_row, item_row, q)
    # warm: users meta-trained on (they have a training task), queried on held-out ratings
    trained = warm_rows["user_id"].isin(pool["user_id"].to_numpy()[keep]).to_numpy()
    warm_rows, pos, held = warm_rows[trained], pos[trained], held[trained]
    warm = _pack(
        warm_rows,
        held,
        np.where(held, pos, pos - q),
        ~held & (pos - q < config.max_support),
        user_row,
        item_row,
        q,
    )
    return train, warm


def build_scenarios(
    ratings: pd.DataFrame,
    roles: dict[str, np.ndarray],
    new_items: set[int] | np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    config: DataConfig,
) -> dict[str, TaskSet]:
    """Every scenario's TaskSet from the ratings frame (vectorised pandas/numpy).

    ``user_ids`` / ``item_ids`` are the feature-table rows' ids (row i has id ``ids[i]``).
    """
    order = np.argsort(user_ids)
    user_row = {"ids": user_ids[order], "rows": order}
    item_row = pd.Series(np.arange(len(item_ids)), index=item_ids)
    is_new = ratings["item_id"].isin(
        np.asarray(list(new_items) if isinstance(new_items, set) else new_items)
    )
    role_of = {role: ratings["user_id"].isin(ids) for role, ids in roles.items()}
    q = config.query_size
    out: dict[str, TaskSet] = {}

    def standard(rows: pd.DataFrame, salt: int) -> TaskSet:
        rows = _order_within_users(_eligible(rows, config), config, salt)
        pos = rows["pos"].to_numpy()
        return _pack(
            rows,
            pos < q,
            np.where(pos < q, pos, pos - q),
            (pos >= q) & (pos < q + config.max_support),
            user_row,
            item_row,
            q,
        )

    warm_rows = _order_within_users(
        _eligible(ratings[role_of["train"] & ~is_new], config), config, salt=1
    )
    out["train"], out["warm"] = _train_and_warm(warm_rows, config, user_row, item_row)
    out["validation"] = standard(ratings[role_of["validation"] & ~is_new], salt=2)
    out["user_cold"] = standard(ratings[role_of["test"] & ~is_new], salt=3)
    out["item_cold"] = standard(ratings[role_of["train"] & is_new], salt=4)
    out["user_item_cold"] = standard(ratings[role_of["test"] & is_new], salt=5)
    if len(out["train"]) == 0:
        raise DataError("no meta-training tasks: too few train users with enough ratings")
    return out


def scenario_stats(tasks: TaskSet) -> dict[str, float]:
    """Users, tasks, support size min/median/max, distinct items, ratings of one scenario."""
    if len(tasks) == 0:
        keys = ("users", "tasks", "support_min", "support_median", "support_max", "items")
        return dict.fromkeys((*keys, "ratings"), 0)
    sizes = tasks.support_sizes().numpy()
    items = np.unique(tasks.rated_rows()[1].numpy())
    return {
        "users": int(np.unique(tasks.user_ids.numpy()).size),
        "tasks": len(tasks),
        "support_min": int(sizes.min()),
        "support_median": float(np.median(sizes)),
        "support_max": int(sizes.max()),
        "items": int(items.size),
        "ratings": int(tasks.support_mask.sum() + tasks.query_mask.sum()),
    }


def save_taskset(tasks: TaskSet, folder: Path) -> None:
    """One ``.npy`` per array (safe: no pickle; memory-mappable)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in tasks.arrays().items():
        np.save(folder / f"{name}.npy", value.numpy(), allow_pickle=False)


def load_taskset(folder: Path, mmap: bool = False) -> TaskSet:
    """Read a TaskSet written by ``save_taskset``.

    ``mmap``: map the ``.npy`` files copy-on-write (``np.load(mmap_mode="c")``) instead of
    reading them. Pages come from the OS page cache on first touch and are shared by every
    process that maps the same files (one copy in RAM for all ranks); the arrays are
    writable (private copy of a page only if written), so ``torch.from_numpy`` wraps them
    without copying and without PyTorch's non-writable-array warning.
    """
    arrays = {}
    for f in fields(TaskSet):
        path = folder / f"{f.name}.npy"
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="c" if mmap else None)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: unreadable task cache ({exc}); delete the cache folder"
            ) from exc
        arrays[f.name] = torch.from_numpy(array)
    return TaskSet(**arrays)
