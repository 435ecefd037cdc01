"""A catalog's user-independent parts, computed once: what scoring a person only reads.

Ranking the whole catalog for a person costs one pass over its I items. Most of that pass
does not depend on the person when no embedding or item table adapts: the items' field
encodings (I, E_i), the first layer's item half W₁ᵢ·xᵢ (I, H) (``network`` adds the user's
half W₁ᵤ·u + b₁), the collaborative part's item terms (b_i, q_i) (I, 1 + k) and the ranking
head's item terms (β_i, q_i) (I, 1 + k_r). ``cache_items`` computes them once under the
bundle's weights (``Recommender`` and ``ModelRanker`` at load); ``catalog_rankings`` then
runs the same formulas as ``PreferenceEstimator.rank_score`` on them, op for op, so the
scores equal the uncached path's (tests/test_items.py). A cached term is ``None`` when its
parameters adapt (it then differs per person and is computed per request).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from melu.features import UNKNOWN, FeatureTables
from melu.model import ranking
from melu.model.collaborative import collaborative, item_terms
from melu.model.estimator import Encoded, PreferenceEstimator, is_embedding
from melu.model.ranking import Bag

_ITEM_PARAMS = ("content.weight", "item.bias", "item.factor")


class ItemCache(NamedTuple):
    """The user-independent parts of I items (catalog rows), under fixed shared weights.

    ``encoded``: ``items`` (I, E_i), ``ids`` (I,) (``user`` empty); ``first`` (I, H), the
    first layer's item half; ``collab`` (I, 1 + k), the collaborative part's item terms;
    ``head`` (I, 1 + k_r), the ranking head's. ``None`` where the model has no such part or
    the part's parameters adapt per person."""

    encoded: Encoded
    first: Tensor | None
    collab: Tensor | None
    head: Tensor | None

    def __len__(self) -> int:
        return len(self.encoded.ids)

    def take(self, rows: Tensor) -> ItemCache:
        """The cache of catalog ``rows`` (N,) only (a request's candidates)."""
        enc = self.encoded
        return ItemCache(
            Encoded(enc.user, enc.items[rows], enc.ids[rows]),
            *(None if t is None else t[rows] for t in (self.first, self.collab, self.head)),
        )


def cache_items(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    tables: FeatureTables,
    fast: Sequence[str],
) -> ItemCache:
    """Every item of ``tables`` (catalog row order) encoded once under ``params``, with the
    parts that ``fast`` (the adapted names; no embedding among them) leaves fixed."""
    if any(is_embedding(k) for k in fast):
        raise ValueError(f"embeddings adapt ({sorted(fast)}): item encodings differ per user")
    device = tables.item_ids.device
    n_items = len(tables.item_ids)
    rows = torch.arange(n_items, device=device)
    unknown = {n: torch.tensor(UNKNOWN, device=device) for n in model.user_field_names}
    ids = (
        tables.items[model.id_field].long()
        if model.id_field
        else torch.zeros(n_items, dtype=torch.long, device=device)
    )
    with torch.no_grad():
        items = model.encode_items(params, tables.with_user(unknown, rows))  # (I, E_i)
        encoded = Encoded(items.new_zeros(0), items, ids)
        first = None if model.linears[0][0] in fast else model.first_items(params, items)
        collab = None
        if model.factors and not set(_ITEM_PARAMS) & set(fast):
            collab = item_terms(params, encoded)
        head = None
        if model.ranking and any(k.startswith(ranking.PREFIX) for k in params):
            head = ranking.item_terms(params, ids)
    return ItemCache(encoded, first, collab, head)


def catalog_network(
    model: PreferenceEstimator, params: Mapping[str, Tensor], cache: ItemCache, user: Tensor
) -> Tensor:
    """The MLP's output over the cached items for ``user`` (E_u,) → (I,) or (T, E_u) →
    (T, I): ``model.network`` with the first layer's item half read from the cache."""
    share = model.user_layer(params, user).unsqueeze(-2)  # (..., 1, H)
    return model.network_rows(params, share, cache.encoded.items, cache.first)


def catalog_ratings(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    cache: ItemCache,
    user: Tensor,
    network: Tensor | None = None,
) -> Tensor:
    """Predicted ratings of the cached items for one person, ``user`` (E_u,) → (I,), or T
    people, ``user`` (T, E_u) (fast params per person (T, ...)) → (T, I): the MLP's output
    (``network`` when the caller has it) plus the model's parts, as ``model.score``."""
    encoded = Encoded(user, cache.encoded.items, cache.encoded.ids)
    if network is None:
        network = catalog_network(model, params, cache, user)
    rating = network
    for part in model.parts:
        cached = part is collaborative and cache.collab is not None
        rating = rating + (collaborative(params, encoded, cache.collab) if cached else part(
            params, encoded
        ))  # fmt: skip
    return rating


def catalog_rankings(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    cache: ItemCache,
    user: Tensor,
    bag: Bag | None = None,
    network: Tensor | None = None,
    rating: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(predicted ratings, ranking scores) of the cached items for one person, ``user``
    (E_u,) → (I,) each, or T people, ``user`` (T, E_u) (fast params per person (T, ...))
    → (T, I) each. ``bag``: the ranking head's supports ((1, L) or (T, L); none: empty).
    ``network``: the MLP's output when the caller has it cached (it does not depend on
    the fast user parameters); ``rating``: the ``catalog_ratings`` when the caller has
    them (then ``network`` is not needed). The same ops as ``model.rank_score`` on
    uncached rows."""
    if rating is None:
        rating = catalog_ratings(model, params, cache, user, network)
    if not model.ranking or not any(k.startswith(ranking.PREFIX) for k in params):
        return rating, rating
    one = user.dim() == 1
    users, ratings = (user[None], rating[None]) if one else (user, rating)
    if bag is None:
        empty = cache.encoded.ids.new_zeros((users.shape[0], 0))
        bag = Bag(empty, empty, empty.bool())
    state = model.user_state(params, users)
    rank = ranking.head_scores(params, users, state, cache.encoded.ids, bag, ratings, cache.head)
    return rating, rank[0] if one else rank
