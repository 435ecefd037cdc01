"""Recommender: adapt the meta-learned model to one person's ratings, then rank the catalog.

A request is ``(user, ratings)``: the person's demographics (any subset, unknown values map
to the "unknown" index 0) and a few ``(item_id, rating)`` pairs, possibly none. The
recommender runs the one inner loop, :func:`melu.model.maml.adapt` (first order at serving, the
bundle's step count and inner learning rate, or its learned Meta-SGD rates), on those
ratings and scores every candidate in one batched pass. Nothing is mutated: the adapted
parameters are a new dict per request, so concurrent requests share nothing mutable.

When no embedding adapts (fast group ``mlp`` or ``head``) the item embeddings (I, Fi·D) are
computed once at load and a request only looks up its user's embeddings; otherwise the rows
are embedded per request from their features.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from melu.bundle import Bundle, find_bundle, load_bundle
from melu.errors import BundleError, MeluError
from melu.features import UNKNOWN, FeatureBatch
from melu.model.estimator import Encoded, is_embedding
from melu.model.maml import Examples, adapt, inner_rates
from melu.serving.onboarding import evidence_scores
from melu.serving.types import (
    Adaptation,
    InvalidInput,
    Ratings,
    Recommendations,
    Scored,
    age_bucket,
)

__all__ = [
    "Adaptation",
    "InvalidInput",
    "Ratings",
    "Recommendations",
    "Recommender",
    "Scored",
    "age_bucket",
]


class Recommender:
    """Serve a bundle: ``recommend``, ``predict`` and ``onboarding_items``. Thread-safe."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device | str | None = None,
        *,
        onboarding: bool = True,
        threads: int | None = None,
        precompute_items: bool = True,
    ) -> None:
        """Prepare ``bundle`` for serving.

        ``onboarding=False`` defers the onboarding ranking (about a second of CPU) to the
        first ``onboarding_items`` call. ``threads``: torch threads applied in each thread
        that calls the recommender (default: that thread's current setting); with a fixed
        count, answers are bit-identical whichever thread computes them.
        ``precompute_items=False`` embeds every candidate per request (the slow reference).
        """
        self.bundle = bundle
        self.threads = threads
        self.device = torch.device(device or "cpu")
        self.model = bundle.model  # a pure function of (params, features): shared by all threads
        self.params = {k: v.to(self.device) for k, v in bundle.params.items()}
        meta = bundle.config.meta
        self.steps = meta.inner_steps
        learned = {k: v.to(self.device) for k, v in (bundle.inner_lr or {}).items()}
        self.lr = inner_rates(meta, learned)
        self.fast = self.model.fast_names()
        self.scale = bundle.features.rating_scale
        self.catalog = bundle.catalog
        self.item_ids = bundle.catalog["item_id"].to_numpy(dtype=np.int64)
        order = np.argsort(self.item_ids, kind="stable")
        self._sorted_ids, self._sorted_rows = self.item_ids[order], order
        self.titles = bundle.catalog["title"].astype(str).tolist()
        self.years = [None if pd.isna(y) else int(y) for y in bundle.catalog["year"]]
        self.genres = [tuple(str(g) for g in v) for v in bundle.catalog["genres"]]
        self.items = bundle.item_features.to(self.device)
        self._user_fields = list(bundle.features.user_fields)
        self._vocab = {f.name: f.index() for f in self._user_fields}
        size = max((f.size for f in self._user_fields), default=1)
        self._codes = torch.arange(size, device=self.device)  # () index tensors to share
        self.shared = precompute_items and not any(is_embedding(k) for k in self.fast)
        with torch.no_grad():
            self._item_embedding = self._embed_items() if self.shared else None
        self._lock = threading.Lock()
        self._onboarding = self._rank_onboarding() if onboarding else None

    @classmethod
    def from_bundle(
        cls,
        path: Path | str,
        device: torch.device | str | None = None,
        *,
        onboarding: bool = True,
        threads: int | None = None,
        precompute_items: bool = True,
    ) -> Recommender:
        """Load ``path`` (a bundle folder, or a run folder holding ``model/``)."""
        path = find_bundle(path)
        bundle = load_bundle(path)
        try:
            return cls(
                bundle, device, onboarding=onboarding, threads=threads,
                precompute_items=precompute_items,
            )  # fmt: skip
        except MeluError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as exc:
            # load_bundle validates what it can; anything it missed is still the bundle's fault
            raise BundleError(
                f"{path}: bundle cannot be served ({type(exc).__name__}: {exc})"
            ) from exc

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Run with ``self.threads`` torch threads in this thread, then restore its count.

        Each thread has its own OpenMP thread count and MKL picks kernels by it (the last
        bits of a result differ), so a fixed count makes answers identical in any thread.
        """
        if self.threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # ~0.2 µs
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # ----------------------------------------------------------------- encoding
    def encode_user(self, user: Mapping[str, Any] | None) -> FeatureBatch:
        """Raw user values → field → () int64 index on the device (unknown → 0).

        Same rule as ``FeatureSpace.encode_user`` (text stripped, zip cut to its prefix),
        plus raw ages mapped to the MovieLens bucket, without building a frame.
        """
        values = dict(user or {})
        out: FeatureBatch = {}
        for name, lookup in self._vocab.items():
            raw = values.get(name)
            text = "" if raw is None else (age_bucket(raw) if name == "age" else str(raw))
            text = text.strip()
            if name == "zip":
                text = text[: self.bundle.features.zip_prefix]
            out[name] = self._codes[lookup.get(text, UNKNOWN)]
        return out

    def rows(self, item_ids: Sequence[int], field: str, *, unique: bool = False) -> Tensor:
        """Data set item ids → catalog rows (N,).

        ``field`` names the list with ``{i}`` where the index goes (``"item_ids[{i}]"``);
        unknown ids raise naming the first one's index and all of them; with ``unique``,
        so does a repeated id.
        """
        ids = np.asarray(list(item_ids), dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
        known = self._sorted_ids[pos] == ids if len(self._sorted_ids) else ids != ids
        if not known.all():
            unknown = sorted({int(i) for i in ids[~known]})
            first = int(np.flatnonzero(~known)[0])
            raise InvalidInput(field.format(i=first), unknown, f"unknown item id(s) {unknown}")
        if unique:
            _, first_seen = np.unique(ids, return_index=True)
            repeated = np.setdiff1d(np.arange(len(ids)), first_seen)
            if len(repeated):
                i = int(repeated[0])
                raise InvalidInput(field.format(i=i), int(ids[i]), "duplicate item id")
        return torch.as_tensor(self._sorted_rows[pos], device=self.device)

    def _embed_items(self) -> Tensor:
        """Item part of the encoded rows, (I, E_i), for every catalog item."""
        rows = torch.arange(self.n_items, device=self.device)
        unknown = {f.name: torch.tensor(UNKNOWN, device=self.device) for f in self._user_fields}
        return self.model.encode_items(self.params, self.items.with_user(unknown, rows))

    def inputs(self, user: FeatureBatch, rows: Tensor) -> FeatureBatch:
        """Features (N, ...) of ``user`` paired with catalog ``rows`` (N,)."""
        return self.items.with_user(user, rows)

    # ----------------------------------------------------------------- adaptation
    def check_ratings(self, ratings: Ratings) -> tuple[Tensor, Tensor]:
        """Validate ``(item_id, rating)`` pairs → catalog rows (N,) and ratings (N,) float."""
        rows = self.rows([r[0] for r in ratings], "ratings[{i}].item_id")
        low, high = self.scale
        seen: set[int] = set()
        for i, (item_id, rating) in enumerate(ratings):
            if int(item_id) in seen:
                raise InvalidInput(f"ratings[{i}].item_id", item_id, "duplicate item id")
            seen.add(int(item_id))
            if not math.isfinite(rating):
                raise InvalidInput(f"ratings[{i}].rating", rating, "must be a finite number")
            if not low <= rating <= high:
                raise InvalidInput(
                    f"ratings[{i}].rating", rating, f"outside the rating scale [{low:g}, {high:g}]"
                )
        values = torch.tensor([float(r[1]) for r in ratings], device=self.device)
        return rows, values

    def adapt(
        self, user: Mapping[str, Any] | None, ratings: Ratings
    ) -> tuple[dict[str, Tensor], FeatureBatch, Adaptation]:
        """Adapted parameters for this person, their encoded features and the inner losses."""
        with self._threads():
            return self._adapt(user, ratings)

    def _adapt(
        self, user: Mapping[str, Any] | None, ratings: Ratings
    ) -> tuple[dict[str, Tensor], FeatureBatch, Adaptation]:
        features = self.encode_user(user)
        rows, values = self.check_ratings(ratings)
        if len(rows) == 0 or self.steps == 0:
            return self.params, features, Adaptation(0, None, None)
        # a batch of one task: adapt's batched kernel skips torch.func's per-call tracing
        support = Examples(
            {k: v[None] for k, v in self.inputs(features, rows).items()},
            values[None],
            torch.ones_like(values, dtype=torch.bool)[None],
        )
        # adapt may differentiate with torch.func: it must see autograd even when the
        # caller runs under inference_mode; no_grad alone is fine for function transforms.
        with torch.inference_mode(False), torch.no_grad():
            params, losses = adapt(
                self.model, self.params, support, steps=self.steps, lr=self.lr,
                first_order=True, fast=self.fast, kernel="batched",
            )  # fmt: skip
        fast = set(self.fast)
        adapted = {k: v[0] if k in fast else v for k, v in params.items()}
        before, after = losses[0, 0].item(), losses[0, -1].item()
        return adapted, features, Adaptation(self.steps, before, after)

    def _scores(self, params: Mapping[str, Tensor], user: FeatureBatch, rows: Tensor) -> Tensor:
        """Unclamped predicted ratings (N,) of ``rows`` in one batched pass."""
        with torch.no_grad():
            if self._item_embedding is None:
                return self.model.predict(params, self.inputs(user, rows))
            encoded = Encoded(self.model.encode_user(params, user), self._item_embedding[rows])
            return self.model.score(params, encoded)

    # ----------------------------------------------------------------- public API
    def predict(
        self, user: Mapping[str, Any] | None, ratings: Ratings, item_ids: Sequence[int]
    ) -> tuple[list[float], Adaptation]:
        """Predicted ratings (clamped to the scale) of ``item_ids`` after adapting."""
        rows = self.rows(item_ids, "item_ids[{i}]", unique=True)
        with self._threads():
            params, features, info = self._adapt(user, ratings)
            scores = self._scores(params, features, rows).clamp(*self.scale)
        return scores.cpu().tolist(), info

    def recommend(
        self,
        user: Mapping[str, Any] | None,
        ratings: Ratings,
        k: int = 10,
        exclude_rated: bool = True,
        candidates: Sequence[int] | None = None,
    ) -> Recommendations:
        """Top-``k`` of the candidates (default: the whole catalog) after adapting.

        Ranked by predicted rating (ties by catalog order); reported scores are clamped to
        the rating scale. Rated items are left out when ``exclude_rated``; fewer than ``k``
        items come back only when fewer candidates remain.
        """
        if not 1 <= k <= self.n_items:
            raise InvalidInput("k", k, f"must be between 1 and the catalog size {self.n_items}")
        if candidates is not None:
            rows = self.rows(candidates, "candidate_ids[{i}]", unique=True)
            if len(candidates) == 0:
                raise InvalidInput("candidate_ids", [], "must not be empty (omit it for all)")
        else:
            rows = torch.arange(self.n_items, device=self.device)
        with self._threads():
            params, features, info = self._adapt(user, ratings)
            scores = self._scores(params, features, rows)
        if exclude_rated and ratings:
            rated = self.rows([r[0] for r in ratings], "ratings[{i}].item_id")  # checked above
            keep = ~torch.isin(rows, rated)
            rows, scores = rows[keep], scores[keep]
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        return Recommendations(self.describe(rows[order], scores[order]), info)

    def describe(self, rows: Tensor, scores: Tensor) -> list[Scored]:
        """Catalog rows (N,) and raw scores (N,) → ``Scored`` items (scores clamped)."""
        clamped = scores.clamp(*self.scale).cpu().tolist()
        return [
            Scored(
                int(self.item_ids[row]),
                self.titles[row],
                self.years[row],
                self.genres[row],
                float(score),
            )
            for row, score in zip(rows.cpu().tolist(), clamped, strict=True)
        ]

    def onboarding_items(self, n: int = 10) -> pd.DataFrame:
        """Items to ask a new user to rate first: MeLU-style evidence candidates.

        Rule (computed once at load, see :func:`melu.serving.onboarding.evidence_scores`): for a
        user with all features unknown, adapt on that single item rated at the top of the
        scale and, separately, at the bottom; the item's *influence* is the mean absolute
        difference between the two adapted models' clamped predictions over a fixed probe set of
        catalog items. Its score is ``log(1 + n_ratings) × influence``: an item helps only
        if people know it (popularity) and their answer moves the model (influence).
        Returns the top ``n`` catalog rows with ``popularity``, ``influence`` and
        ``onboarding_score`` columns.
        """
        if n < 1:
            raise InvalidInput("n", n, "must be >= 1")
        with self._lock:
            if self._onboarding is None:
                self._onboarding = self._rank_onboarding()
        return self._onboarding.head(n).reset_index(drop=True)

    def _rank_onboarding(self) -> pd.DataFrame:
        """The whole catalog ranked by the onboarding rule (under no_grad)."""
        with self._threads(), torch.no_grad():
            return self._onboarding_frame()

    def _onboarding_frame(self) -> pd.DataFrame:
        unknown = self.encode_user(None)
        rows = torch.arange(self.n_items, device=self.device)
        popularity = self.catalog["n_ratings"].to_numpy(dtype=np.float64)
        influence = evidence_scores(
            self.model,
            self.params,
            self.inputs(unknown, rows),
            popularity,
            self.scale,
            steps=self.steps,
            lr=self.lr,
        )
        frame = self.catalog[["item_id", "title", "year", "genres", "n_ratings"]].copy()
        frame["popularity"] = popularity
        frame["influence"] = influence
        frame["onboarding_score"] = np.log1p(popularity) * influence
        order = np.lexsort((frame["item_id"].to_numpy(), -frame["onboarding_score"].to_numpy()))
        return frame.iloc[order].reset_index(drop=True)
