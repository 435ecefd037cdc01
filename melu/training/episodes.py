"""Episodes: fresh meta-training tasks drawn from all training ratings, and hidden items.

MeLU meta-trains on fixed tasks of users with 13..100 ratings, so the heavy raters (most of
what is known about the movies) and the light ones are never seen. ``episodes`` turns every
training user's ratings into one task per epoch instead: a seeded random query of up to
``query_size`` ratings (at most half of the user's), and a support of a random size drawn
uniformly from 1..``max_support`` (capped by what is left), so the small supports a new
user actually has are trained for. ``hide_items`` maps a random share of items to the
"unknown" item id for one meta-batch, so the content path that new items take is trained.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from melu.config import DataConfig
from melu.features import UNKNOWN, FeatureBatch
from melu.prepare import RatingRows
from melu.tasks import TaskSet, scatter_padded


def episodes(rows: RatingRows, user_ids: Tensor, config: DataConfig, seed: int) -> TaskSet:
    """One task per training user with at least 4 ratings in ``rows`` (sorted by user).

    ``user_ids`` (U,) are the feature tables' user ids (for ``TaskSet.user_ids``). Vectorised:
    one lexsort of the ratings by (user, random key), no loop over users.
    """
    rng = np.random.default_rng(seed)
    users = rows.user_rows.numpy().astype(np.int64)
    order = np.lexsort((rng.random(len(users)), users))
    users = users[order]
    items, ratings = rows.item_rows.numpy()[order], rows.ratings.numpy()[order]
    unique, start, count = np.unique(users, return_index=True, return_counts=True)
    keep = count >= 4
    query = np.minimum(config.query_size, count // 2)
    room = np.maximum(np.minimum(config.max_support, count - query), 1)
    support = np.minimum((rng.random(len(unique)) * room).astype(np.int64) + 1, room)
    task = np.repeat(np.cumsum(keep) - 1, count)  # row → task index (dropped users: unused)
    pos = np.arange(len(users)) - np.repeat(start, count)
    q, s, kept = np.repeat(query, count), np.repeat(support, count), np.repeat(keep, count)
    is_query = kept & (pos < q)
    is_support = kept & (pos >= q) & (pos < q + s)
    n_tasks = int(keep.sum())
    width = int(support[keep].max()) if n_tasks else 1
    s_items, s_ratings, s_mask = scatter_padded(
        task, pos - q, is_support, items, ratings, n_tasks, width
    )
    q_items, q_ratings, q_mask = scatter_padded(
        task, pos, is_query, items, ratings, n_tasks, config.query_size
    )
    user_rows = torch.from_numpy(unique[keep].astype(np.int32))
    return TaskSet(
        user_rows, user_ids[user_rows.long()].long(),
        s_items, s_ratings, s_mask, q_items, q_ratings, q_mask,
    )  # fmt: skip


def hide_items(features: FeatureBatch, field: str, hidden: Tensor) -> FeatureBatch:
    """``features`` with the item ids of ``field`` flagged in ``hidden`` (V,) set to unknown."""
    ids = features[field]
    return {**features, field: torch.where(hidden[ids], UNKNOWN, ids)}


def hidden_ids(size: int, share: float, seed: int, device: torch.device) -> Tensor:
    """(size,) bool: a seeded random ``share`` of the item-id vocabulary (never "unknown"
    itself); the same on every rank of a data-parallel run and after a resume."""
    hidden = torch.rand(size, generator=torch.Generator().manual_seed(seed)) < share
    hidden[UNKNOWN] = False
    return hidden.to(device)
