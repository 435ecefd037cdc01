"""The ranking head's statistics, counted or solved once from the training ratings.

``melu.model.ranking`` scores with them (``rank.cooccurrence``, ``rank.item_count``,
``rank.ease``, ``rank.liked``, ``rank.walk``); ``melu.training.rank_train`` builds them before the head's
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
    x = rated_ids(ids, users, n_ids, n_users)
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


# the (α, β) grid of RP³β's walk weights, for the head's part and for its baseline alike:
# α = 1 is the plain walk (P³), α < 1 evens out the steps; β > 0 lowers popular items
WALK_SETTINGS = tuple((a, b) for a in (0.5, 0.75, 1.0) for b in (0.0, 0.2, 0.4, 0.6))

# user-kNN's grid, for the head's part and for its baseline alike: the exponent α of each
# training user's similarity, and how many of the most similar are kept (0: all of them)
NEIGHBOUR_ALPHAS = (1.0, 2.0, 3.0)
NEIGHBOUR_KEEPS = (25, 100, 0)


def walk_weights(rated: Tensor, alpha: float, beta: float) -> Tensor:
    """RP³β's item–item weights W (V, V) (Paudel et al. 2017; Christoffel et al. 2015) from
    the binary who-rated-what matrix ``rated`` (users, V): the chance of a 3-step walk item
    j → user u → item i with every step's probability raised to α,
    W[j, i] = d_j^-α · Σ_u x_uj·x_ui·d_u^-α, then divided by d_i^β (d: the degrees, the
    count of ratings of an item or by a user), the diagonal 0. Rows or columns without
    ratings are 0."""
    x = rated.float()
    user_degree = x.sum(1).clamp(min=1.0)  # (users,)
    item_degree = x.sum(0).clamp(min=1.0)  # (V,)
    first = x.T * item_degree.pow(-alpha).unsqueeze(1)  # (V, users): j → u
    second = x * user_degree.pow(-alpha).unsqueeze(1)  # (users, V): u → i
    weights = (first @ second) / item_degree.pow(beta).unsqueeze(0)
    return weights.fill_diagonal_(0.0)


def rated_ids(ids: Tensor, users: Tensor, n_ids: int, n_users: int) -> Tensor:
    """X (n_users, n_ids) binary: 1 where the user rated the id (the unknown id 0 left out)."""
    x = torch.zeros(n_users, n_ids)
    x[users, ids] = 1.0
    x[:, 0] = 0.0
    return x


__all__ = [
    "LIKED_LAMBDAS", "NEIGHBOUR_ALPHAS", "NEIGHBOUR_KEEPS", "WALK_SETTINGS", "co_ratings", "cooccurrence", "ease_precision",
    "liked_weights", "rated_ids", "walk_weights",
]  # fmt: skip
