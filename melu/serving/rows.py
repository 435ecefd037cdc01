"""Model inputs of a request: one person's features paired with catalog rows.

Features are the model's one input form. When no embedding adapts (fast group ``mlp`` or
``head``) the item half of every encoded row (I, E_i) is computed once at load, so scoring
a request only encodes its user and runs ``score``; otherwise rows are encoded per request.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.features import UNKNOWN, FeatureBatch, FeatureSpace, FeatureTables
from melu.model.estimator import Encoded, PreferenceEstimator, is_embedding
from melu.serving.types import User


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

    def scores(self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor) -> Tensor:
        """Unclamped predicted ratings (N,) of catalog ``rows`` for ``user`` under ``params``."""
        if self._item_encoding is None:
            return self.model.predict(params, self(user, rows))
        encoded = Encoded(
            self.model.encode_user(params, user), self._item_encoding[rows], self._ids[rows]
        )
        return self.model.score(params, encoded)

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
