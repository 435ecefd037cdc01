"""The ranking head's statistics, counted or solved once from the training ratings.

``melu.model.ranking`` scores with them (``rank.cooccurrence``, ``rank.item_count``,
``rank.ease``, ``rank.liked``); ``melu.training.rank_train`` builds them before the head's
weights are picked. None of them is trained.
"""

from __future__ import annotations

import torch
from torch import Tensor


def co_ratings(
    ids: Tensor, users: Tensor, n_ids: int, n_users: int, liked: Tensor | None = None
) -> Tensor:
    """G (n_ids, n_ids): how many users rated both ids, from rated (user, id) pairs (N,)
    each (the unknown id 0 left out). With ``liked`` (N,) bool: G[j, i] = how many users
    rated j and liked i (XᵀY, Y the liked pairs)."""
    x = torch.zeros(n_users, n_ids)
    x[users, ids] = 1.0
    x[:, 0] = 0.0
    if liked is None:
        return x.T @ x
    y = torch.zeros(n_users, n_ids)
    y[users[liked], ids[liked]] = 1.0
    y[:, 0] = 0.0
    return x.T @ y


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


# the λ grid of the liked-target weights, for the head's part and for its baseline alike
LIKED_LAMBDAS = (1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5)


def liked_weights(gram: Tensor, liked_gram: Tensor, lam: float) -> Tensor:
    """B (V, V) = argmin ‖Y − XB‖² + λ‖B‖² subject to diag(B) = 0: EASE^R's closed form
    with the *liked* pairs Y as the target instead of X itself (``gram`` = XᵀX,
    ``liked_gram`` = XᵀY, see ``co_ratings``). With P = (XᵀX + λI)⁻¹ the Lagrangian gives
    B = P·XᵀY − P·diag(μ), μ_i = (P·XᵀY)_ii / P_ii (Y = X gives EASE^R's
    I − P·diag(1/P_ii))."""
    # float32 through a Cholesky factor (XᵀX + λI is positive definite): ~3x faster than
    # float64, within 1e-6 of it relative on ML-100K (λ >= 1e3 keeps it well conditioned)
    a = gram.float() + lam * torch.eye(len(gram), dtype=torch.float32)
    prec = torch.cholesky_inverse(torch.linalg.cholesky(a))
    solved = prec @ liked_gram.float()
    mu = solved.diagonal() / prec.diagonal()
    return solved - prec * mu.unsqueeze(0)


__all__ = [
    "LIKED_LAMBDAS", "co_ratings", "cooccurrence", "ease_precision", "liked_weights",
]  # fmt: skip
