"""User and item splits: which users train, validate or test, and which items are new.

Decided once per data set (and per fold for K-fold studies), before any task is built:
``melu.tasks`` turns these roles into the scenarios' TaskSets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from melu.config import DataConfig


def new_item_mask(items: pd.DataFrame, fraction: float) -> np.ndarray:
    """(I,) bool: the newest ``fraction`` of items by release date (then year, then id).

    Items without any date count as old. Ties are broken by item id, so the share is exact.
    """
    year = items["year"].astype("Float64").fillna(-1).to_numpy(dtype=np.float64)
    released = pd.to_datetime(items.get("released", pd.Series(pd.NaT, index=items.index)))
    stamp = released.astype("int64").to_numpy()
    stamp = np.where(released.isna().to_numpy(), np.iinfo(np.int64).min, stamp)
    order = np.lexsort((items["item_id"].to_numpy(), stamp, year))  # oldest first
    mask = np.zeros(len(items), dtype=bool)
    n_new = round(fraction * len(items))
    if n_new:
        mask[order[-n_new:]] = True
    return mask


def split_users(ratings: pd.DataFrame, config: DataConfig) -> dict[str, np.ndarray]:
    """User ids → ``train`` / ``validation`` / ``test`` roles.

    ``time``: ordered by first rating (ties by id); the oldest ``train_fraction`` train, the
    next ``validation_fraction`` validate, the newest rest are test (cold) users.
    ``random``: a seeded permutation instead.
    ``folds`` K > 1 (random split only): see ``fold_users``; ``train_fraction`` is unused.
    """
    first = ratings.groupby("user_id", sort=True)["timestamp"].min()
    ids = first.index.to_numpy(dtype=np.int64)
    if config.folds:
        return fold_users(ids, config)
    if config.user_split == "time":
        ids = ids[np.lexsort((ids, first.to_numpy()))]
    else:
        ids = np.random.default_rng(config.seed).permutation(ids)
    n_train = round(config.train_fraction * len(ids))
    n_val = round(config.validation_fraction * len(ids))
    return {
        "train": np.sort(ids[:n_train]),
        "validation": np.sort(ids[n_train : n_train + n_val]),
        "test": np.sort(ids[n_train + n_val :]),
    }


def fold_users(ids: np.ndarray, config: DataConfig) -> dict[str, np.ndarray]:
    """K-fold roles of user ``ids``: shuffled once with ``config.seed`` and cut into
    ``config.folds`` near-equal folds; test = fold ``config.fold`` (so every user is a test
    user in exactly one fold); validation = ``round(validation_fraction × len(ids))`` of
    the others, drawn with the seed and fold; train = the rest."""
    perm = np.random.default_rng(config.seed).permutation(np.sort(ids))
    parts = np.array_split(perm, config.folds)
    test = parts[config.fold]
    rest = np.concatenate([p for k, p in enumerate(parts) if k != config.fold])
    rest = np.random.default_rng([config.seed, config.fold]).permutation(rest)
    n_val = round(config.validation_fraction * len(ids))
    return {
        "train": np.sort(rest[n_val:]),
        "validation": np.sort(rest[:n_val]),
        "test": np.sort(test),
    }
