"""Model inputs of a request: one person's features paired with catalog rows.

When no embedding adapts (fast group ``mlp`` or ``head``) the item half of every embedded
row (I, Fi·D) is computed once at load, and a request only looks up its user's
embeddings: rows are then embedded (N, E) tensors, or the factored form (the user once,
the items per row) that ``adapt``'s batched MLP kernel reads. Otherwise rows are feature
indices that the model embeds per request.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.features import UNKNOWN, FeatureBatch, FeatureSpace, FeatureTables
from melu.model.estimator import Embedded, PreferenceEstimator, embed
from melu.model.maml import embeds_are_shared
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
        embeds every row per request (the slow reference)."""
        self.features = features
        self.device = device
        self.items = items.to(device)
        names = [f.name for f in features.user_fields]
        self.embedded = (
            precompute
            and embeds_are_shared(model, model.fast_names())
            and model.field_names[: len(names)] == names
        )
        tables = [params[f"embeddings.{n}.weight"] for n in names] if self.embedded else []
        self._user_tables = tables
        self._names = names
        self._item_embedding: Tensor | None = None
        if self.embedded:
            with torch.no_grad():
                self._item_embedding = self._embed_items(model, params)

    def _embed_items(self, model: PreferenceEstimator, params: Mapping[str, Tensor]) -> Tensor:
        """Item part of the embedded rows, (I, Fi·D), for every catalog item."""
        rows = torch.arange(len(self.items.item_ids), device=self.device)
        unknown = {name: torch.tensor(UNKNOWN, device=self.device) for name in self._names}
        full = embed(model, params, self.items.with_user(unknown, rows))
        return full[:, len(self._names) * model.config.embedding_dim :]

    def user(self, values: User | None) -> FeatureBatch:
        """Raw demographics → field → () index on the device (``FeatureSpace.encode_user``)."""
        return self.features.encode_user(values, self.device)

    def _user_embedding(self, user: FeatureBatch) -> Tensor:
        """(Fu·D,) the user's embeddings, concatenated in field order."""
        assert self._item_embedding is not None
        parts = [table[user[n]] for n, table in zip(self._names, self._user_tables, strict=True)]
        return torch.cat(parts) if parts else self._item_embedding.new_zeros(0)

    def __call__(self, user: FeatureBatch, rows: Tensor) -> Tensor | FeatureBatch:
        """Inputs of ``user`` with catalog ``rows`` (N,): embedded (N, E) or features."""
        if self._item_embedding is None:
            return self.items.with_user(user, rows)
        head = self._user_embedding(user).expand(len(rows), -1)
        return torch.cat([head, self._item_embedding[rows]], dim=-1)

    def factored(self, user: FeatureBatch, rows: Tensor) -> Embedded:
        """The same rows as one task in factored form: user (1, Fu·D), items (1, N, Fi·D)."""
        assert self._item_embedding is not None, "only when item embeddings are precomputed"
        return Embedded(self._user_embedding(user)[None], self._item_embedding[rows][None])
