"""The ranking head's statistics, counted or solved once from the training ratings.

``melu.model.ranking`` scores with them (``rank.cooccurrence``, ``rank.item_count``,
``rank.ease``); ``melu.training.rank_train`` builds them before the head's weights are
picked. None of them is trained.
"""

from __future__ import annotations

import torch
from torch import Tensor


def co_ratings(ids: Tensor, users: Tensor, n_ids: int, n_users: int) -> Tensor:
    """G (n_ids, n_ids): how many users rated both ids, from rated (user, id) pairs (N,)
    each (the unknown id 0 left out)."""
    x = torch.zeros(n_users, n_ids)
    x[users, ids] = 1.0
    x[:, 0] = 0.0
    return x.T @ x


def cooccurrence(ids: Tensor, users: Tensor, n_ids: int, n_users: int) -> tuple[Tensor, Tensor]:
    """From rated (user, item id) pairs (N,) each: P (n_ids, n_ids), P[j, i] = the share of
    the users who rated j that also rated i (diagonal and unknown id 0: 0), and the count of
    raters of each id (n_ids,)."""
    gram = co_ratings(ids, users, n_ids, n_users)
    count = gram.diagonal().clone()
    share = gram / count.clamp(min=1.0).unsqueeze(1)
    share.fill_diagonal_(0.0)
    return share, count


def ease_precision(gram: Tensor, lam: float) -> Tensor:
    """P = (G + λI)⁻¹ (V, V) of a co-rating Gram matrix: EASE^R (Steck 2019) is
    B = I − P·diag(1/diag(P)); the head keeps P so it can leave a user out exactly."""
    eye = torch.eye(len(gram), dtype=torch.float64)
    return torch.linalg.inv(gram.double() + lam * eye).float()


__all__ = ["co_ratings", "cooccurrence", "ease_precision"]
