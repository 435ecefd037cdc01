"""The ranking head: which movies this person will pick and love, over the whole catalog.

The rating part of the estimator predicts *how* a user rates what they chose to rate; that
rewards acclaimed films and barely moves with a few ratings (issue 15). The ranking head
orders the catalog by the log-odds that the user rates an item highly, from three additive
terms, each a function of ``(params, rows)`` like every other part:

    s_i = β_i  +  Σ_{j ∈ support} w(r_j) · B[j, i]  +  a_u · q_i

- β_i, q_i (k_r): the item's ranking bias and factor — its own id rows plus a content
  estimate from its feature embeddings (new items, and ids hidden in training, take the
  content alone);
- the support-set part: the user's rated items as a bag, each weighted by a learned weight
  of its rating level w(r) (a 1★ film counts against its neighbours), scored against every
  item through a learned item–item matrix B (EASE-like, diagonal and "unknown" excluded);
- a_u = A·[u; b_u; p_u] + a₀: the user's demographics u and the rating part's user bias and
  factor *after* the one ``adapt()`` on the support, so adaptation moves the ranking.

Trained (``melu.training.rank_train``) by the multinomial likelihood of each episode's
held-out items over the catalog (Mult-VAE's loss) given the adapted user and the support,
with the rating part fixed: the rating head, and so the rating error, is untouched.
Parameters are named ``rank.*``; none of them is fast (adapted per user).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

PREFIX = "rank."


class Bag(NamedTuple):
    """A batch of supports as the ranking head sees them (T users, L slots).

    ``ids`` (T, L) item-id feature indices (0: unknown/new, ignored); ``levels`` (T, L)
    rating-level indices (0 = the lowest rating); ``mask`` (T, L) bool, false on padding.
    """

    ids: Tensor
    levels: Tensor
    mask: Tensor


def head_shapes(
    n_ids: int, n_levels: int, item_width: int, user_width: int, factors: int, rank: int
) -> dict[str, torch.Size]:
    """The head's parameters: ``n_ids`` item-id vocabulary (0 unknown), ``n_levels``
    rating levels, item/user embedding widths, the rating part's ``factors``, head rank."""
    return {
        "rank.item_item": torch.Size((n_ids, n_ids)),
        "rank.level_weight": torch.Size((n_levels,)),
        "rank.rating_weight": torch.Size((1,)),
        "rank.item_bias": torch.Size((n_ids,)),
        "rank.item_factor": torch.Size((n_ids, rank)),
        "rank.content.weight": torch.Size((rank + 1, item_width)),
        "rank.content.bias": torch.Size((1,)),
        "rank.user.weight": torch.Size((rank, user_width + factors + 1)),
        "rank.user.bias": torch.Size((rank,)),
    }


def init_head(shapes: Mapping[str, torch.Size], popularity: Tensor, seed: int) -> dict[str, Tensor]:
    """Initial head parameters from their own seeded generator (the rating part's draws
    are unchanged): B = 0, w = 1, β = log(1 + training count) of each id (``popularity``
    (n_ids,)), small random item factors and user map."""
    gen = torch.Generator().manual_seed(seed)
    out = {name: torch.zeros(shape) for name, shape in shapes.items()}
    out["rank.level_weight"].fill_(1.0)
    out["rank.item_bias"] = torch.log1p(popularity.float())
    for name in ("rank.item_factor", "rank.user.weight"):
        out[name] = torch.randn(shapes[name], generator=gen) * 0.01
    return out


def user_vector(params: Mapping[str, Tensor], user: Tensor, state: Tensor) -> Tensor:
    """a_u (..., k_r) from the user's embeddings ``user`` (..., E_u) and the rating part's
    adapted user bias and factor ``state`` (..., 1 + k)."""
    x = torch.cat([user, state], dim=-1)
    return x @ params["rank.user.weight"].mT + params["rank.user.bias"]


def item_terms(params: Mapping[str, Tensor], items: Tensor, ids: Tensor) -> Tensor:
    """(β_i, q_i) (..., N, 1 + k_r) of items with embeddings ``items`` (..., N, E_i) and id
    indices ``ids`` (..., N): a known id's own rows; for unknown ids (0: new items, and ids
    hidden in training) a content estimate from the item's feature embeddings."""
    content = items @ params["rank.content.weight"].mT  # (..., N, 1 + k_r)
    bias = torch.cat([params["rank.content.bias"], content.new_zeros(content.shape[-1] - 1)])
    known = (ids != 0).unsqueeze(-1)
    own = torch.cat(
        [params["rank.item_bias"][ids].unsqueeze(-1), params["rank.item_factor"][ids]], dim=-1
    )
    return torch.where(known, own, content + bias)


def bag_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """Σ_j w(r_j)·B[j, i] (T, N) of each user's bag against items ``ids`` (T, N) or (N,).

    Unknown ids (0) on either side contribute nothing; a bag item never scores itself.
    """
    weight = params["rank.level_weight"][bag.levels] * (bag.mask & (bag.ids != 0))  # (T, L)
    rows = params["rank.item_item"][bag.ids]  # (T, L, V)
    per_id = (weight.unsqueeze(-1) * rows).sum(-2)  # (T, V)
    self_term = torch.zeros_like(per_id).scatter_add_(
        -1, bag.ids, weight * rows.gather(-1, bag.ids.unsqueeze(-1)).squeeze(-1)
    )  # what each bag item gives its own column (B's diagonal), removed below
    per_id = per_id - self_term
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(per_id), -1)
    return per_id.gather(-1, targets) * (targets != 0).to(per_id.dtype)


def head_scores(
    params: Mapping[str, Tensor],
    user: Tensor,
    state: Tensor,
    items: Tensor,
    ids: Tensor,
    bag: Bag,
    rating: Tensor,
) -> Tensor:
    """Ranking scores s (T, N): ``user`` (T, E_u), ``state`` (T, 1 + k), item embeddings
    ``items`` (T, N, E_i) or (N, E_i) with ids (T, N) or (N,), the supports ``bag`` and
    the rating part's predicted ratings ``rating`` (T, N) after adaptation (γ·r̂ joins)."""
    terms = item_terms(params, items, ids)  # (T|-, N, 1 + k_r)
    a = user_vector(params, user, state)  # (T, k_r)
    if terms.dim() == 3:
        interaction = (terms[..., 1:] * a.unsqueeze(-2)).sum(-1)
    else:
        interaction = a @ terms[:, 1:].mT
    liked = params["rank.rating_weight"] * rating
    return terms[..., 0] + interaction + liked + bag_scores(params, bag, ids)


def rating_levels(ratings: Tensor, low: float, step: float, n_levels: int) -> Tensor:
    """Rating values (...) → level indices 0..n_levels-1 (clamped)."""
    level = torch.round((ratings - low) / step).long()
    return level.clamp(0, n_levels - 1)
