"""The meta-learned model as a top-N ``Ranker``: adapt to each support, score the catalog.

``ModelRanker(bundle, tables)`` adapts a batch of C supports together with the one inner
loop (``adapt(..., kernel="batched", first_order=True)``, the bundle's steps and rates, as
``Recommender.adapt_tasks`` serves them; a support of 0 ratings is not adapted: the
meta-learned prior from the user's features), then ranks every catalog item by
``model.rank_score``. When no embedding adapts, the items are encoded once and a chunk of
users × all items is scored in one broadcast pass (as ``RowEncoder.catalog_scores``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.bundle import Bundle
from melu.errors import BundleError
from melu.evaluation.topn import Supports, chunks
from melu.features import UNKNOWN, FeatureTables
from melu.model.estimator import Encoded, Params, is_embedding
from melu.model.maml import Examples, adapt, inner_rates

SCORE_CHUNK = 32  # users scored together: (32, I, H) activations


class ModelRanker:
    """Rank the catalog for new users with a model bundle (a ``topn.Ranker``)."""

    def __init__(
        self, bundle: Bundle, tables: FeatureTables, device: torch.device | str | None = None
    ) -> None:
        """``tables``: the prepared data's feature tables (``Supports.user_rows`` index their
        users, ``Supports.items`` their items, which must be the bundle's catalog rows)."""
        if not torch.equal(tables.item_ids, bundle.item_features.item_ids):
            raise BundleError(
                f"{bundle.path or 'model bundle'}: catalog rows differ from the data's"
            )
        self.device = torch.device(device or "cpu")
        self.model = bundle.model
        self.params = {k: v.to(self.device) for k, v in bundle.params.items()}
        self.steps = bundle.config.meta.inner_steps
        learned = {k: v.to(self.device) for k, v in (bundle.inner_lr or {}).items()}
        self.lr = inner_rates(bundle.config.meta, learned)
        self.fast = self.model.fast_names()
        self.tables = tables.to(self.device)
        self.shared = not any(is_embedding(k) for k in self.fast)
        n_items = len(tables.item_ids)
        self.all_items = torch.arange(n_items, device=self.device)
        self._ids = (
            self.tables.items[self.model.id_field]
            if self.model.id_field
            else torch.zeros(n_items, dtype=torch.long, device=self.device)
        )
        self._items: Tensor | None = None
        if self.shared:
            with torch.no_grad():
                self._items = self.model.encode_items(self.params, self._item_rows())  # (I, E_i)

    def _item_rows(self) -> dict[str, Tensor]:
        unknown = {
            n: torch.tensor(UNKNOWN, device=self.device) for n in self.model.user_field_names
        }
        return self.tables.with_user(unknown, self.all_items)

    def adapted(self, supports: Supports) -> tuple[Params, bool]:
        """The params adapted to each support (fast ones (C, ...)) and whether they carry a
        per-user dim (not when the supports are empty or the model takes no steps)."""
        if supports.items.shape[1] == 0 or self.steps == 0 or not bool(supports.mask.any()):
            return dict(self.params), False
        user_rows = supports.user_rows.to(self.device).long()
        items = supports.items.to(self.device).long()
        inputs = self.tables.gather(user_rows, items)
        support = Examples(
            inputs, supports.ratings.to(self.device).float(), supports.mask.to(self.device)
        )
        with torch.inference_mode(False), torch.no_grad():
            params, _ = adapt(
                self.model, self.params, support, steps=self.steps, lr=self.lr,
                first_order=True, fast=self.fast, kernel="batched",
            )  # fmt: skip
        return params, True

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) ranking scores of every catalog item after adapting to each support."""
        params, per_user = self.adapted(supports)
        user_rows = supports.user_rows.to(self.device).long()
        out = []
        with torch.no_grad():
            for part in chunks(len(user_rows), SCORE_CHUNK):
                mine = {k: v[part] if per_user and k in self.fast else v for k, v in params.items()}
                out.append(self._score(mine, user_rows[part], per_user))
        if not out:
            return torch.zeros(0, len(self.all_items), device=self.device)
        return torch.cat(out)

    def _score(self, params: Mapping[str, Tensor], user_rows: Tensor, per_user: bool) -> Tensor:
        """(c, I) scores of a chunk of users (fast params (c, ...) when ``per_user``)."""
        users = {k: v[user_rows] for k, v in self.tables.users.items()}  # field → (c,)
        if self._items is not None:
            user = self.model.encode_user(params, users)  # (c, E_u)
            if user.dim() == 1:  # no user fields
                user = user.expand(len(user_rows), 0)
            return self.model.rank_score(params, Encoded(user, self._items, self._ids))
        rows = []  # embeddings adapt: each user's catalog is encoded with their own tables
        for c in range(len(user_rows)):
            own = {k: v[c] if per_user and k in self.fast else v for k, v in params.items()}
            one = self.tables.with_user({k: v[c] for k, v in users.items()}, self.all_items)
            rows.append(self.model.rank_score(own, self.model.encode(own, one)))
        return torch.stack(rows)
