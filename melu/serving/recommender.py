"""Recommender: adapt the meta-learned model to one person's ratings, then rank the catalog.

A request is ``(user, ratings)``: the person's demographics (any subset, unknown values map
to the "unknown" index 0) and a few ``(item_id, rating)`` pairs, possibly none. The
recommender runs the one inner loop, :func:`melu.model.maml.adapt` (first order at serving,
the bundle's step count and inner learning rate, or its learned Meta-SGD rates), on those
ratings and scores every candidate in one batched pass. Nothing is mutated: the adapted
parameters are a new dict per request, so concurrent requests share nothing mutable.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from melu.bundle import Bundle, find_bundle, load_bundle
from melu.config_fields import check_threads
from melu.errors import BundleError, InvalidInput, MeluError
from melu.model.estimator import Params
from melu.model.linear import AffineExamples
from melu.model.maml import Examples, Kernel, adapt, inner_rates
from melu.serving import batch, results
from melu.serving.catalog import Catalog
from melu.serving.onboarding import evidence_scores, rank
from melu.serving.rows import Person, RowEncoder, Scores
from melu.serving.types import (
    Adaptation,
    OnboardingItem,
    Ratings,
    Recommendations,
    Request,
    User,
)


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
        ``precompute_items=False`` embeds every candidate per request and adapts by the
        batched kernel's autograd (the plain path, the reference of tests and benchmarks).
        """
        self.bundle = bundle
        self.device = torch.device(device or "cpu")
        self.threads = (
            threads if threads is None else check_threads(threads, "threads (MELU_TORCH_THREADS)")
        )
        self.catalog = Catalog(bundle.catalog)
        self.params = {k: v.to(self.device) for k, v in bundle.params.items()}
        cut = self.params.get("rank.shared_cut")  # the head's personalisation rule, if on
        self.rule_base = self.params if cut is not None and bool((cut > 0).any()) else None
        meta = bundle.config.meta
        self.steps = meta.inner_steps
        learned = {k: v.to(self.device) for k, v in (bundle.inner_lr or {}).items()}
        self.lr = inner_rates(meta, learned)
        self.model = bundle.model  # a pure function of (params, features): shared by all threads
        self.fast = self.model.fast_names()
        self.encoder = RowEncoder(
            self.model, self.params, bundle.features, bundle.item_features,
            precompute=precompute_items, device=self.device,
        )  # fmt: skip
        # the fast user offsets enter linearly: their inner step in closed form (the slow
        # reference keeps autograd's, the batched kernel)
        self.kernel: Kernel = "linear" if self.encoder.linear else "batched"
        self._lock = threading.Lock()
        self.warm_up()
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

    def warm_up(self) -> None:
        """The probe request every bundle must answer before it serves (~ms): the whole
        catalog scored (predicted ratings and ranking scores) from features only, and again
        after adapting to one rating (the top of the scale on the most-rated item). A
        non-finite score or support loss is a
        ``BundleError`` (finite weights can still overflow: huge values, or an in-bounds
        ``inner_lr`` of 1e30 in config.json), so NaN is refused at load, never served."""
        with self._threads(), torch.no_grad():
            user = self.encoder.person(self.params, None, catalog=True)
            top = torch.tensor([int(self.catalog.n_ratings.argmax())], device=self.device)
            rating = torch.tensor([self.scale[1]], device=self.device)
            adapted, info = self._adapt_to(user, top, rating)
            losses = [info.support_loss_before or 0.0, info.support_loss_after or 0.0]
            bags = (self.encoder.bag(top[:0], rating[:0]), self.encoder.bag(top, rating))
            probes = (
                (self.params, "without ratings", bags[0]),
                (adapted, "after one rating", bags[1]),
            )
            for params, when, bag in probes:
                scores, ranks = self.encoder.rankings(params, user, None, bag)
                finite = bool(torch.isfinite(scores).all() and torch.isfinite(ranks).all())
                if not finite or (params is adapted and not all(map(math.isfinite, losses))):
                    raise BundleError(
                        f"{self.bundle.path or 'bundle'}: the model gives non-finite scores "
                        f"({when}, a probe request at load); its weights or config.json's "
                        f"inner loop (inner_lr {self.bundle.config.meta.inner_lr:g}, "
                        f"{self.steps} steps) make it overflow, so it is not served"
                    )

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def scale(self) -> tuple[float, float]:
        """The rating scale (low, high)."""
        return self.bundle.features.rating_scale

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

    # ----------------------------------------------------------------- adaptation
    def adapt_tasks(self, support: Examples | AffineExamples) -> tuple[Params, Tensor]:
        """The one call of the inner loop in serving: T people's supports (T, N) adapted
        together, first order, the bundle's steps and rates (the closed-form kernel when
        the fast parameters enter linearly, else the batched one). Returns the params with
        the fast ones per person (T, ...) and the support losses (T, steps + 1)."""
        # adapt may differentiate with torch.func: it must see autograd even when the
        # caller runs under inference_mode; no_grad alone is fine for function transforms.
        with torch.inference_mode(False), torch.no_grad():
            return adapt(
                self.model, self.params, support, steps=self.steps, lr=self.lr,
                first_order=True, fast=self.fast, kernel=self.kernel,
            )  # fmt: skip

    def _adapt_to(
        self, user: Person, rows: Tensor, values: Tensor
    ) -> tuple[Mapping[str, Tensor], Adaptation]:
        """Parameters adapted to a person (``user``) who rated catalog ``rows`` (N,) ``values``:
        the one call of the inner loop, first order, the bundle's steps and rates."""
        if len(rows) == 0 or self.steps == 0:
            return self.params, Adaptation(0, None, None)
        # a batch of one task: adapt's batched kernels (pinned to the generic path by
        # tests) skip torch.func's per-call tracing
        start = time.perf_counter()
        params, losses = self.adapt_tasks(self.encoder.support(self.params, user, rows, values))
        fast = set(self.fast)
        adapted = {k: v[0] if k in fast else v for k, v in params.items()}
        curve = losses[0].tolist()  # one copy out: (steps + 1,)
        before, after = curve[0], curve[-1]
        return adapted, Adaptation(self.steps, before, after, time.perf_counter() - start)

    def _score(
        self, user: User | None, ratings: Ratings, rows: Tensor | None
    ) -> tuple[Scores, Adaptation]:
        """Adapt to the person, then the predicted ratings and ranking scores of catalog
        ``rows`` (N,) (``None``: the whole catalog), the rated catalog rows (R,) as a bag,
        and how adaptation went."""
        with self._threads():
            found, checked = self.catalog.rated(ratings, self.scale)
            with torch.no_grad():
                features = self.encoder.person(self.params, user, catalog=rows is None)
            rated = torch.as_tensor(found, device=self.device)
            values = torch.tensor(checked, device=self.device)
            params, info = self._adapt_to(features, rated, values)
            bag = self.encoder.bag(rated, values)
            with torch.no_grad():
                rating, rank = self.encoder.rankings(params, features, rows, bag, self.rule_base)
        return Scores(rows, rating, rank, rated, values, params, bag), info

    # ----------------------------------------------------------------- public API
    def predict(
        self, user: User | None, ratings: Ratings, item_ids: Sequence[int]
    ) -> tuple[list[float], Adaptation]:
        """Predicted ratings (clamped to the scale) of ``item_ids`` after adapting."""
        rows = self.catalog.rows(item_ids, ("item_ids",), unique=True)
        scores, info = self._score(user, ratings, torch.as_tensor(rows, device=self.device))
        return scores.rating.clamp(*self.scale).cpu().tolist(), info

    def recommend(
        self,
        user: User | None,
        ratings: Ratings,
        k: int = 10,
        exclude_rated: bool = True,
        candidates: Sequence[int] | None = None,
    ) -> Recommendations:
        """Top-``k`` of the candidates (default: the whole catalog) after adapting.

        Ranked by the model's ranking score (its ranking head; the predicted rating for a
        model without one), ties by catalog order; each item shows its predicted rating,
        clamped to the scale, and the rated items that raised it most (``because``). Rated
        items are left out when ``exclude_rated``; fewer than ``k`` items come back only
        when fewer candidates remain.
        """
        request = Request(user, ratings, k, exclude_rated, candidates)
        rows = self._candidates(request)
        scores, info = self._score(user, ratings, rows)
        return results.top(self, request, scores, info)

    def recommend_many(self, requests: Sequence[Request]) -> list[Recommendations]:
        """``recommend`` for many people at once: every request is checked first (a bad one
        raises ``InvalidInput`` at ``(i, ...)``, nothing is computed), then all adapt together
        in one batched ``adapt`` and the catalog is scored in chunks of users."""
        return batch.recommend_many(self, requests)

    def _candidates(self, request: Request) -> Tensor | None:
        """Checked ``k`` and the candidate catalog rows (N,) of a request (``None``: all)."""
        k, candidates = request.k, request.candidates
        if not 1 <= k <= self.n_items:
            raise InvalidInput(("k",), k, f"must be between 1 and the catalog size {self.n_items}")
        if candidates is None:
            return None
        found = self.catalog.rows(candidates, ("candidate_ids",), unique=True)
        if len(candidates) == 0:
            raise InvalidInput(("candidate_ids",), [], "must not be empty (omit it for all)")
        return torch.as_tensor(found, device=self.device)

    def onboarding_items(self, n: int = 10) -> list[OnboardingItem]:
        """The ``n`` items to ask a new user to rate first: MeLU-style evidence candidates.

        Rule (computed once, see :mod:`melu.serving.onboarding`): for a user with all
        features unknown, adapt on that single item rated at the top of the scale and,
        separately, at the bottom; the item's *influence* is the mean absolute difference
        between the two adapted models' clamped predictions over a fixed probe set of
        catalog items. Its score is ``log(1 + n_ratings) × influence``: an item helps only
        if people know it (popularity) and their answer moves the model (influence).
        """
        if n < 1:
            raise InvalidInput(("n",), n, "must be >= 1")
        with self._lock:
            if self._onboarding is None:
                self._onboarding = self._rank_onboarding()
        return self._onboarding[:n]

    def _rank_onboarding(self) -> list[OnboardingItem]:
        """The whole catalog ranked by the onboarding rule (under no_grad)."""
        with self._threads(), torch.no_grad():
            rows = torch.arange(self.n_items, device=self.device)
            influence = evidence_scores(
                self.model, self.params, self.encoder(self.encoder.user(None), rows),
                self.catalog.n_ratings.astype(float), self.scale, steps=self.steps, lr=self.lr,
            )  # fmt: skip
        return rank(self.catalog, influence)
