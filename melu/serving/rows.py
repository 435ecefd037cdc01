"""Model inputs of a request: one person's features paired with catalog rows.

Features are the model's one input form. When no embedding adapts (fast groups ``user``,
``mlp``, ``head``) everything about the catalog that does not depend on the person is
computed once at load (``melu.model.items.ItemCache``: item encodings, the first layer's
item half, the collaborative and ranking item terms), so a request only encodes its user,
adapts on its rated rows' cached encodings and scores the whole catalog in one pass over
the cache (no per-request copy of catalog rows); otherwise rows are encoded per request.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from melu.features import FeatureBatch, FeatureSpace, FeatureTables
from melu.model import personal, reasons
from melu.model.estimator import Encoded, PreferenceEstimator, is_embedding
from melu.model.items import ItemCache, cache_items, catalog_network, catalog_rankings
from melu.model.linear import AffineExamples, at_prior, linear_applies, user_prior
from melu.model.maml import Examples
from melu.model.ranking import Bag
from melu.serving.types import User

LISTS_KEPT = 65_536  # no-ratings lists kept per encoder (distinct user fields; 10 rows each)


@dataclass(frozen=True)
class Scores:
    """One person's scored candidates: catalog ``rows`` (N,) (``None``: the whole catalog
    in row order), predicted ``rating`` (N,), ranking score ``rank`` (N,); their rated
    rows (R,), ``values`` (R,), adapted ``params`` and the rated items as the ranking
    head's ``bag`` (1, R)."""

    rows: Tensor | None
    rating: Tensor
    rank: Tensor
    rated: Tensor
    values: Tensor
    params: Mapping[str, Tensor]
    bag: Bag


class Person(NamedTuple):
    """One person's inputs for a request: ``features`` (field → () index); with the cache,
    their user embedding ``user`` (E_u,) and, when no MLP parameter adapts, the MLP's
    output over the whole catalog ``network`` (I,) (the same before and after adapting:
    the support rows read theirs from it)."""

    features: FeatureBatch
    user: Tensor | None = None
    network: Tensor | None = None


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
        fast = model.fast_names()
        self.shared = precompute and not any(is_embedding(k) for k in fast)
        self.cache: ItemCache | None = (
            cache_items(model, params, self.items, fast) if self.shared else None
        )
        # no MLP parameter adapts: its output over the catalog depends on the user fields only
        self.fixed_mlp = not any(k.startswith("mlp.") for k in fast)
        # the user offsets alone adapt: the support goes to the linear kernel in affine form
        self.linear = self.shared and linear_applies(model, fast)
        self._lists: dict[tuple[int, ...], Tensor] = {}  # no-ratings lists by user fields
        self._lock = threading.Lock()
        self._ids = (
            self.items.items[model.id_field].long()
            if model.id_field
            else torch.zeros(len(self.items.item_ids), dtype=torch.long, device=device)
        )

    def user(self, values: User | None) -> FeatureBatch:
        """Raw demographics → field → () index on the device (``FeatureSpace.encode_user``)."""
        return self.features.encode_user(values, self.device)

    def __call__(self, user: FeatureBatch, rows: Tensor) -> FeatureBatch:
        """Features (N, ...) of ``user`` paired with catalog ``rows`` (N,)."""
        return self.items.with_user(user, rows)

    def person(self, params: Mapping[str, Tensor], values: User | None, *, catalog: bool) -> Person:
        """A person's ``Person`` from raw demographics; ``catalog``: the whole catalog will
        be scored (so the MLP's pass over it is done here, once)."""
        features = self.user(values)
        if self.cache is None:
            return Person(features)
        user = self.model.encode_user(params, features)  # (E_u,)
        network = None
        if catalog and self.fixed_mlp:
            network = catalog_network(self.model, params, self.cache, user)  # (I,)
        return Person(features, user, network)

    def support(
        self, params: Mapping[str, Tensor], person: Person, rated: Tensor, values: Tensor
    ) -> Examples | AffineExamples:
        """A person's rated catalog rows (R,) and ratings (R,) as a batch of one task (1, R)
        for ``adapt``: in affine form from the cache (their MLP outputs read from the
        catalog pass) for the linear kernel, else their features."""
        mask = torch.ones(1, len(rated), dtype=torch.bool, device=self.device)
        if not self.linear or person.user is None:
            features = self(person.features, rated)
            return Examples({k: v[None] for k, v in features.items()}, values[None], mask)
        rows = rated[None]
        network = None if person.network is None else person.network[rows]
        return self.affine(params, person.user[None], rows, values[None], mask, network)

    def affine(
        self,
        params: Mapping[str, Tensor],
        user: Tensor,
        rows: Tensor,
        ratings: Tensor,
        mask: Tensor,
        network: Tensor | None = None,
    ) -> AffineExamples:
        """T people's rated catalog ``rows`` (T, N) in the linear kernel's affine form from
        the cache: ``user`` embeddings (T, E_u), ``ratings`` / ``mask`` (T, N), ``network``
        the rows' MLP outputs (T, N) if known (else computed over their cached halves)."""
        cache, model = self.cache, self.model
        assert cache is not None and cache.collab is not None  # the linear kernel's case
        if network is None:
            first = None if cache.first is None else cache.first[rows]
            share = model.user_layer(params, user).unsqueeze(-2)  # (T, 1, H)
            network = model.network_rows(params, share, cache.encoded.items[rows], first)
        prior = user_prior(params, user).unsqueeze(-2)  # (T, 1, 1 + k)
        return AffineExamples(at_prior(network, cache.collab[rows], prior), ratings, mask)

    def encoded(self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor) -> Encoded:
        """``user`` (E_u,) with catalog ``rows`` (N, E_i), ids (N,), encoded."""
        if self.cache is None:
            return self.model.encode(params, self(user, rows))
        return self.cache.take(rows).encoded._replace(user=self.model.encode_user(params, user))

    def bag(self, rated: Tensor, values: Tensor) -> Bag:
        """A person's rated catalog rows (R,) and ratings (R,) as the ranking head's bag (1, R)."""
        mask = torch.ones_like(rated, dtype=torch.bool)
        return self.model.bag(self._ids[rated][None], values[None], mask[None])

    def rankings(
        self,
        params: Mapping[str, Tensor],
        person: Person,
        rows: Tensor | None,
        bag: Bag,
        base: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(predicted ratings (N,), ranking scores (N,)) of catalog ``rows`` (``None``: the
        whole catalog, (I,)) for ``person``: the rating is what is shown, the ranking score
        what orders (the same without a ranking head). Over the whole catalog, with the
        bundle's unadapted ``base`` params (None when its rule is off), the scores are held
        to the head's personalisation rule (``personal.shown_scores``; candidates are ranked as scored)."""
        rating, rank = self._rankings(params, person, rows, bag)
        if rows is not None or base is None:
            return rating, rank
        keep = personal.kept_of_list(params, bag)
        if keep is None:
            return rating, rank
        empty = self.no_ratings_list(base, person)
        return rating, personal.shown_scores(rank[None], self._ids, bag, empty[None], keep)[0]

    def no_ratings_list(self, base: Mapping[str, Tensor], person: Person) -> Tensor:
        """The catalog rows (SHOWN,) ``person`` would see with no ratings, from the bundle's
        unadapted ``base`` params (always the same ones for this encoder): ranked once per
        distinct user fields and kept (a bounded cache, oldest out first)."""
        fields = list(person.features.values())
        key = tuple(torch.stack(fields).tolist()) if fields else ()
        with self._lock:
            hit = self._lists.get(key)
        if hit is not None:
            return hit
        none = self._rankings(base, person, None, None)[1]
        empty = personal.list_of(none)
        with self._lock:
            if len(self._lists) >= LISTS_KEPT:
                self._lists.pop(next(iter(self._lists)))
            self._lists[key] = empty
        return empty

    def _rankings(
        self, params: Mapping[str, Tensor], person: Person, rows: Tensor | None, bag: Bag | None
    ) -> tuple[Tensor, Tensor]:
        """``rankings`` before the personalisation rule (``bag`` None: no ratings)."""
        user = person.features
        if self.cache is not None and person.user is not None:
            if rows is None:
                return catalog_rankings(
                    self.model, params, self.cache, person.user, bag, person.network
                )
            return catalog_rankings(self.model, params, self.cache.take(rows), person.user, bag)
        if rows is None:
            rows = torch.arange(len(self._ids), device=self.device)
        encoded = self.encoded(params, user, rows)
        network = self.model.network(params, encoded)  # computed once, used by both
        rating = self.model.with_parts(params, encoded, network)
        if not self.model.ranking:
            return rating, rating
        one = Encoded(encoded.user[None], encoded.items, encoded.ids)
        return rating, self.model.rank_score(params, one, bag, network[None])[0]

    def reasons(self, params: Mapping[str, Tensor], rows: Tensor, bag: Bag) -> Tensor:
        """(N, L) what each bag item adds to the ranking score of catalog ``rows`` (N,)
        (bag (1, L)); or (C, K, L) for C people's ``rows`` (C, K) and bags (C, L)."""
        if not self.model.ranking:
            return torch.zeros(*rows.shape, bag.ids.shape[-1], device=rows.device)
        ids = self._ids[rows]
        if rows.dim() == 1:
            return reasons.contributions(params, bag, ids[None])[0]
        return reasons.contributions(params, bag, ids)

    def catalog_network(self, params: Mapping[str, Tensor], user: Tensor) -> Tensor:
        """The MLP's output over the whole catalog (T, I) for T people's user embeddings
        ``user`` (T, E_u) (their MLP params may carry a leading dim T); needs the cache."""
        assert self.cache is not None
        return catalog_network(self.model, params, self.cache, user)
