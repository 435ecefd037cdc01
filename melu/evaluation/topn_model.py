"""The meta-learned model as a top-N ``Ranker``: adapt to each support, score the catalog.

``ModelRanker.from_bundle(bundle, tables)`` ranks for a batch of C supports through
``melu.model.predict.rank_catalog``: the one inner loop (``adapt(..., kernel="batched",
first_order=True)``, the bundle's steps and rates, as ``Recommender.adapt_tasks`` serves
them; a support of 0 ratings is not adapted: the meta-learned prior from the user's
features), then ``model.rank_score`` of every catalog item with the support as the ranking
head's bag. The catalog's user-independent parts are computed once
(``melu.model.items.cache_items``, as the recommender's); a chunk of users × all items is
scored in one broadcast pass over them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.bundle import Bundle
from melu.errors import BundleError
from melu.evaluation.topn import Supports, chunks
from melu.features import FeatureTables
from melu.model.estimator import PreferenceEstimator, is_embedding
from melu.model.items import cache_items
from melu.model.maml import Examples, Lr, inner_rates
from melu.model.predict import rank_catalog

SCORE_CHUNK = 32  # users scored together: (32, I, H) activations


class ModelRanker:
    """Rank the catalog for new users with a model's weights (a ``topn.Ranker``)."""

    def __init__(
        self,
        model: PreferenceEstimator,
        params: Mapping[str, Tensor],
        tables: FeatureTables,
        *,
        steps: int,
        lr: Lr,
        device: torch.device | str | None = None,
        network: Tensor | None = None,
    ) -> None:
        """``tables``: the prepared data's feature tables (``Supports.user_rows`` index their
        users, ``Supports.items`` their items = the catalog rows). ``network``: the MLP's
        output (users, I) of every user row, when the caller has it cached (training the
        head with the rating part fixed)."""
        self.device = torch.device(device or "cpu")
        self.model, self.steps, self.lr, self.network = model, steps, lr, network
        self.params = {k: v.to(self.device) for k, v in params.items()}
        self.fast = model.fast_names()
        if any(is_embedding(k) for k in self.fast):
            raise BundleError(
                f"fast group {model.config.fast_params!r} adapts embeddings; top-N ranking "
                "needs item encodings shared by all users"
            )
        self.tables = tables.to(self.device)
        # the catalog's user-independent parts, once (as ``Recommender`` serves them), from
        # the params given here: later swaps of other params (part weights) are fine
        self.items = cache_items(model, self.params, self.tables, self.fast)
        self.catalog = self.items.encoded  # items (I, E_i), ids (I,)

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, tables: FeatureTables, device: torch.device | str | None = None
    ) -> ModelRanker:
        """The bundle's model, weights, inner steps and rates (as ``Recommender`` serves
        them) on the prepared data's ``tables``, whose item rows must be its catalog's."""
        if not torch.equal(tables.item_ids, bundle.item_features.item_ids):
            raise BundleError(
                f"{bundle.path or 'model bundle'}: catalog rows differ from the data's"
            )
        learned = {k: v.to(device or "cpu") for k, v in (bundle.inner_lr or {}).items()}
        try:
            return cls(
                bundle.model, bundle.params, tables, steps=bundle.config.meta.inner_steps,
                lr=inner_rates(bundle.config.meta, learned), device=device,
            )  # fmt: skip
        except BundleError as exc:
            raise BundleError(f"{bundle.path or 'model bundle'}: {exc}") from None

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) ranking scores of every catalog item after adapting to each support:
        ``rank_catalog`` (the one batched adapt, then ``rank_score`` with the support as
        the ranking head's bag) for chunks of users over the items encoded once."""
        user_rows = supports.user_rows.to(self.device).long()
        out = []
        for part in chunks(len(user_rows), SCORE_CHUNK):
            rows, items = user_rows[part], supports.items[part].to(self.device).long()
            support = Examples(
                self.tables.gather(rows, items),
                supports.ratings[part].to(self.device).float(),
                supports.mask[part].to(self.device),
            )
            users = {k: v[rows] for k, v in self.tables.users.items()}  # field → (c,)
            network = self.network[rows] if self.network is not None else None
            with torch.inference_mode(False), torch.no_grad():
                out.append(rank_catalog(
                    self.model, self.params, users, support, self.items, steps=self.steps,
                    lr=self.lr, fast=self.fast, network=network,
                ))  # fmt: skip
        if not out:
            return torch.zeros(0, len(self.tables.item_ids), device=self.device)
        return torch.cat(out)
