"""Model inputs of a request: one person's features paired with catalog rows.

Features are the model's one input form. When no embedding adapts (fast group ``mlp`` or
``head``) the item half of every encoded row (I, E_i) is computed once at load, so scoring
a request only encodes its user and runs ``score``; otherwise rows are encoded per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from melu.features import UNKNOWN, FeatureBatch, FeatureSpace, FeatureTables
from melu.model import ranking
from melu.model.estimator import Encoded, PreferenceEstimator, is_embedding
from melu.model.ranking import Bag
from melu.serving.types import User


@dataclass(frozen=True)
class Scores:
    """One person's scored candidates: catalog ``rows`` (N,), predicted ``rating`` (N,),
    ranking score ``rank`` (N,); their rated rows (R,), ``values`` (R,), adapted ``params``
    and the rated items as the ranking head's ``bag`` (1, R)."""

    rows: Tensor
    rating: Tensor
    rank: Tensor
    rated: Tensor
    values: Tensor
    params: Mapping[str, Tensor]
    bag: Bag


class RowEncoder:
    """Build the model inputs of (user, catalog rows) for one bundle on one device."""

    def __init__(
        self,
        model: PreferenceEstimator,
        params: Mapping[str, Tensor],
        features: FeatureSpace,
        items: FeatureTables,
        *,
        precompute: bool,
        device: torch.device,
    ) -> None:
        """``items``: the catalog's item features in catalog row order; ``precompute=False``
        encodes every row per request (the slow reference)."""
        self.model, self.features, self.device = model, features, device
        self.items = items.to(device)
        self.shared = precompute and not any(is_embedding(k) for k in model.fast_names())
        self._item_encoding: Tensor | None = None
        self._ids = (
            self.items.items[model.id_field]
            if model.id_field
            else torch.zeros(len(self.items.item_ids), dtype=torch.long, device=device)
        )
        if self.shared:
            rows = torch.arange(len(self.items.item_ids), device=device)
            unknown = {f.name: torch.tensor(UNKNOWN, device=device) for f in features.user_fields}
            with torch.no_grad():
                self._item_encoding = model.encode_items(
                    params, self.items.with_user(unknown, rows)
                )

    def user(self, values: User | None) -> FeatureBatch:
        """Raw demographics → field → () index on the device (``FeatureSpace.encode_user``)."""
        return self.features.encode_user(values, self.device)

    def __call__(self, user: FeatureBatch, rows: Tensor) -> FeatureBatch:
        """Features (N, ...) of ``user`` paired with catalog ``rows`` (N,)."""
        return self.items.with_user(user, rows)

    def encoded(self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor) -> Encoded:
        """``user`` (E_u,) with catalog ``rows`` (N, E_i), ids (N,), encoded."""
        if self._item_encoding is None:
            return self.model.encode(params, self(user, rows))
        return Encoded(
            self.model.encode_user(params, user), self._item_encoding[rows], self._ids[rows]
        )

    def scores(self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor) -> Tensor:
        """Unclamped predicted ratings (N,) of catalog ``rows`` for ``user`` under ``params``."""
        return self.model.score(params, self.encoded(params, user, rows))

    def bag(self, rated: Tensor, values: Tensor) -> Bag:
        """A person's rated catalog rows (R,) and ratings (R,) as the ranking head's bag (1, R)."""
        mask = torch.ones_like(rated, dtype=torch.bool)
        return self.model.bag(self._ids[rated][None], values[None], mask[None])

    def rankings(
        self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor, bag: Bag
    ) -> tuple[Tensor, Tensor]:
        """(predicted ratings (N,), ranking scores (N,)) of catalog ``rows`` for ``user``:
        the rating is what is shown, the ranking score what orders (the same without a
        ranking head)."""
        encoded = self.encoded(params, user, rows)
        network = self.model.network(params, encoded)  # computed once, used by both
        rating = self.model.with_parts(params, encoded, network)
        if not self.model.ranking:
            return rating, rating
        one = Encoded(encoded.user[None], encoded.items, encoded.ids)
        return rating, self.model.rank_score(params, one, bag, network[None])[0]

    def reasons(self, params: Mapping[str, Tensor], rows: Tensor, bag: Bag) -> Tensor:
        """(N, L) what each bag item adds to the ranking score of catalog ``rows`` (N,)."""
        if not self.model.ranking:
            return torch.zeros(len(rows), bag.ids.shape[-1], device=rows.device)
        return ranking.contributions(params, bag, self._ids[rows][None])[0]

    def catalog_scores(self, params: Mapping[str, Tensor], users: FeatureBatch) -> Tensor | None:
        """Unclamped predicted ratings (T, I) of the whole catalog for T users (field → (T,))
        whose adapted (MLP) params may carry a leading dim T; ``None`` when the item encodings are
        not precomputed (then score each user with ``scores``)."""
        if self._item_encoding is None:
            return None
        user = self.model.encode_user(params, users)  # (T, E_u)
        if user.dim() == 1:  # no user fields: (0,) → (T, 0)
            user = user.expand(next(iter(users.values())).shape[0], 0)
        # shared MLP weights (H, W) and per-user ones (T, H, W) broadcast alike in ``score``
        return self.model.score(params, Encoded(user, self._item_encoding, self._ids))  # (T, I)

    def catalog_rankings(
        self, params: Mapping[str, Tensor], users: FeatureBatch, bag: Bag
    ) -> tuple[Tensor, Tensor] | None:
        """(predicted ratings (T, I), ranking scores (T, I)) of the whole catalog for T
        users with their bags (T, L); ``None`` without precomputed item encodings."""
        if self._item_encoding is None:
            return None
        user = self.model.encode_user(params, users)
        if user.dim() == 1:
            user = user.expand(next(iter(users.values())).shape[0], 0)
        encoded = Encoded(user, self._item_encoding, self._ids)
        network = self.model.network(params, encoded)  # (T, I)
        rating = self.model.with_parts(params, encoded, network)
        if not self.model.ranking:
            return rating, rating
        return rating, self.model.rank_score(params, encoded, bag, network)
