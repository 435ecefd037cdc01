"""The top-N baselines, fit on the training ratings, settings picked on validation users
with the top-N protocol.

``fit_topn_baselines(prepared)`` fits, on ``Prepared.train_ratings`` only (never a
validation or test user's rating):

- ``popularity``: the number of training ratings of each item;
- ``item_knn``: cosine on co-ratings, K neighbours and the support weighting validated
  (``melu.evaluation.topn_item_item``);
- ``user_knn``: the training users who rated what the new user rated, weighted by their
  overlap^α, K neighbours and the target (what they rated or liked) validated
  (``melu.evaluation.topn_user_knn``);
- ``ease``: EASE^R, λ and the support weighting validated;
- ``ease_liked``: EASE^R regressed on the items users liked (rated ≥ the protocol's
  threshold) instead of on what they rated, λ and the weighting validated: the ranking
  head's liked part alone, so the tables show what the rest of the model adds to it;
- ``rp3beta``: RP³β's random walk item → user → item (Paudel et al. 2017), α and β and the
  support weighting validated: the ranking head's walk part alone;
- ``implicit_als``: weighted ALS from the ``implicit`` library, new users folded in with
  ``recalculate_user`` (``melu.evaluation.topn_als``), its hyper-parameters validated;
- ``baseline_predictor`` and ``mf_fold_in``: the rating baselines (μ + b_i + b_u and MF
  with fold-in, fit as ``melu.evaluation.fitted`` fits them: settings on validation MAE),
  ranking every catalog item by the rating they predict from the support (before clipping
  to the scale, which would only make the top items tie). The item shrinkage λ_i of
  μ + b_i + b_u, which alone sets its order, is picked again on the top-N validation
  (the MAE's choice can be λ_i = 0, which ranks items rated once 5 first).

Every grid point is scored on the validation users by the top-N protocol: the mean over
support sizes ``n ∈ {3, 5, 10}`` of the mean NDCG@10, candidates the whole catalog.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.bias import BiasPredictor
from melu.evaluation.fitted import fit_rating_baselines
from melu.evaluation.mf import MatrixFactorization
from melu.evaluation.topn import (
    Ranker,
    Supports,
    TopNProtocol,
    TopNUsers,
    rank_users,
    topn_users,
    training_popularity,
    user_metrics,
)
from melu.evaluation.topn_als import ALSSettings, fit_implicit_als
from melu.evaluation.topn_item_item import (
    WEIGHTINGS,
    ItemItemRanker,
    Weighting,
    cosine,
    ease,
    gram,
    keep_neighbours,
    liked_gram,
    rated_matrix,
)
from melu.evaluation.topn_user_knn import TARGETS, Neighbours, Target, UserKnnRanker
from melu.model import ranking_stats
from melu.prepare import Prepared, RatingRows
from melu.tasks import TaskSet

Progress = Callable[[str], None]
Candidate = tuple[dict[str, Any], Ranker]
NAMES = (
    "popularity", "item_knn", "user_knn", "ease", "ease_liked", "rp3beta", "implicit_als",
    "baseline_predictor", "mf_fold_in",
)  # fmt: skip


@dataclass(frozen=True)
class TopNBaselineConfig:
    """The validation protocol and the grids the validation users pick from."""

    supports: tuple[int, ...] = (3, 5, 10)  # validation support sizes (NDCG averaged)
    k: int = 10  # validated metric: NDCG@k
    knn_neighbours: tuple[int, ...] = (0, 20, 100)  # 0: every item
    # user-kNN's α and K (0: every training user): the grid the head's own part picks from
    user_knn_alphas: tuple[float, ...] = ranking_stats.NEIGHBOUR_ALPHAS
    user_knn_neighbours: tuple[int, ...] = ranking_stats.NEIGHBOUR_KEEPS
    user_knn_targets: tuple[Target, ...] = TARGETS
    ease_lambdas: tuple[float, ...] = (200.0, 1e3, 5e3, 2e4, 1e5, 5e5)
    # the liked-target EASE^R's: the grid the ranking head's own liked part picks from
    liked_lambdas: tuple[float, ...] = ranking_stats.LIKED_LAMBDAS
    # RP³β's (α, β): the grid the ranking head's own walk part picks from
    walk_settings: tuple[tuple[float, float], ...] = ranking_stats.WALK_SETTINGS
    weightings: tuple[Weighting, ...] = WEIGHTINGS  # support weighting of kNN and EASE
    als_factors: tuple[int, ...] = (32, 64)
    als_regularization: tuple[float, ...] = (30.0, 100.0, 300.0, 1000.0)
    als_alpha: tuple[float, ...] = (3.0, 10.0, 30.0)
    als_iterations: tuple[int, ...] = (15,)
    als_weightings: tuple[Weighting, ...] = ("binary",)
    rating: BaselineConfig = field(default_factory=BaselineConfig)  # the rating baselines
    item_shrinkage: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4)  # λ_i
    seed: int = 0


@dataclass(frozen=True)
class PopularityRanker:
    """The same list for everyone: ``popularity`` (I,) training rating counts."""

    popularity: Tensor

    def scores(self, supports: Supports) -> Tensor:
        return self.popularity.float().unsqueeze(0).expand(len(supports), -1)


def _as_tasks(supports: Supports) -> TaskSet:
    """The supports as a TaskSet without query slots (what the rating baselines read)."""
    empty = supports.items[:, :0]
    return TaskSet(
        supports.user_rows, supports.user_rows, supports.items, supports.ratings,
        supports.mask, empty, empty.float(), empty.bool(),
    )  # fmt: skip


@dataclass(frozen=True)
class BiasRanker:
    """μ + b_i + b_u for every catalog item, b_u from the support (the same for all items:
    the order is b_i's)."""

    model: BiasPredictor

    def scores(self, supports: Supports) -> Tensor:
        b_i = self.model.item_bias()  # (I,)
        b_u = self.model.user_bias(_as_tasks(supports), b_i)  # (C,)
        return (self.model.mu + b_i.unsqueeze(0) + b_u.unsqueeze(1)).float()


@dataclass(frozen=True)
class MFRanker:
    """μ + b_u + b_i + p_u·q_i for every catalog item, (p_u, b_u) folded in from the support."""

    model: MatrixFactorization

    def scores(self, supports: Supports) -> Tensor:
        m = self.model
        factors, bias = m.fold_in(supports.items, supports.ratings, supports.mask)
        inter = factors @ m.item_factors.T  # (C, I)
        return (m.mu + bias.unsqueeze(1) + m.item_bias.unsqueeze(0) + inter).float()


@dataclass(frozen=True)
class Validation:
    """The validation users at each support size and their relevant items (U, I)."""

    users: tuple[TopNUsers, ...]
    relevant: tuple[Tensor, ...]
    k: int

    @classmethod
    def build(
        cls, prepared: Prepared, protocol: TopNProtocol, sizes: Iterable[int], k: int
    ) -> Validation:
        users = tuple(topn_users(prepared, "validation", n, protocol) for n in sizes)
        for u in users:
            if len(u) == 0:
                raise ValueError(
                    f"TopNBaselineConfig.supports: no validation user is eligible at n={u.n} "
                    f"(TopNProtocol.min_ratings={protocol.min_ratings}, "
                    f"min_heldout={protocol.min_heldout})"
                )
        return cls(users, tuple(u.relevant(protocol.threshold) for u in users), k)

    def score(self, ranker: Ranker) -> float:
        """Mean over the support sizes of the users' mean NDCG@k."""
        per_size = []
        for users, relevant in zip(self.users, self.relevant, strict=True):
            top = rank_users(ranker, users, self.k)
            per_size.append(float(user_metrics(top, relevant, (self.k,))[f"ndcg@{self.k}"].mean()))
        return sum(per_size) / len(per_size)


def pick(candidates: Iterable[Candidate], validation: Validation) -> tuple[Ranker, dict[str, Any]]:
    """The candidate with the highest validation score (the first of equals), and the
    chosen settings with every grid point's score."""
    metric = f"ndcg@{validation.k}"
    grid: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Ranker] | None = None
    for settings, ranker in candidates:
        score = validation.score(ranker)
        grid.append({**settings, metric: score})
        if best is None or score > best[0]:
            best = (score, settings, ranker)
    if best is None:
        raise ValueError("TopNBaselineConfig: an empty grid")
    return best[2], {"chosen": best[1], f"validation_{metric}": best[0], "grid": grid}


def _knn(g: Tensor, config: TopNBaselineConfig, popularity: Tensor) -> Iterator[Candidate]:
    sim = cosine(g).float()
    for neighbours, weighting in itertools.product(config.knn_neighbours, config.weightings):
        ranker = ItemItemRanker(keep_neighbours(sim, neighbours), weighting, popularity)
        yield {"neighbours": neighbours, "weighting": weighting}, ranker


def _user_knn(
    neighbours: Neighbours, config: TopNBaselineConfig, popularity: Tensor
) -> Iterator[Candidate]:
    grid = itertools.product(
        config.user_knn_alphas, config.user_knn_neighbours, config.user_knn_targets
    )
    for alpha, keep, target in grid:
        ranker = UserKnnRanker(neighbours, alpha, keep, target, popularity)
        yield {"alpha": alpha, "neighbours": keep, "target": target}, ranker


def _ease(g: Tensor, config: TopNBaselineConfig, popularity: Tensor) -> Iterator[Candidate]:
    g32 = g.float()  # float32: twice as fast; |B₃₂ − B₆₄| ≤ 2e-6 on ML-1M (entries ≤ 0.3)
    for lam in config.ease_lambdas:
        b = ease(g32, lam)
        for weighting in config.weightings:
            yield {"lambda": lam, "weighting": weighting}, ItemItemRanker(b, weighting, popularity)


def _ease_liked(
    g: Tensor, liked: Tensor, config: TopNBaselineConfig, popularity: Tensor
) -> Iterator[Candidate]:
    """EASE^R regressed on the liked items (``topn_item_item`` docstring), λ on validation."""
    for lam in config.liked_lambdas:
        b = ranking_stats.liked_weights(g, liked, lam)
        for weighting in config.weightings:
            yield {"lambda": lam, "weighting": weighting}, ItemItemRanker(b, weighting, popularity)


def _walk(
    rows: RatingRows, n_items: int, config: TopNBaselineConfig, popularity: Tensor
) -> Iterator[Candidate]:
    """RP³β (``ranking_stats.walk_weights``) on who rated what, (α, β) on validation."""
    x = torch.from_numpy(rated_matrix(rows, n_items).toarray()).float()  # (users, I)
    for alpha, beta in config.walk_settings:
        w = ranking_stats.walk_weights(x, alpha, beta)
        for weighting in config.weightings:
            settings = {"alpha": alpha, "beta": beta, "weighting": weighting}
            yield settings, ItemItemRanker(w, weighting, popularity)


def _als(
    rows: RatingRows, n_items: int, config: TopNBaselineConfig, popularity: Tensor
) -> Iterator[Candidate]:
    grid = itertools.product(
        config.als_factors, config.als_regularization, config.als_alpha,
        config.als_iterations, config.als_weightings,
    )  # fmt: skip
    for point in grid:
        settings = ALSSettings(*point)
        yield asdict(settings), fit_implicit_als(rows, n_items, settings, popularity, config.seed)


def _mf(mf: MatrixFactorization) -> Iterator[Candidate]:
    yield {"rank": mf.rank, "reg": mf.reg, "picked_on": "validation MAE"}, MFRanker(mf)


def _bias(bias: BiasPredictor, config: TopNBaselineConfig) -> Iterator[Candidate]:
    """λ_i on the top-N validation (it alone sets the order: b_u is the same for every
    item); λ_u as picked on validation MAE."""
    for item in config.item_shrinkage:
        model = bias.with_shrinkage(item, bias.user_shrinkage)
        yield {"item_shrinkage": item, "user_shrinkage": bias.user_shrinkage}, BiasRanker(model)


def fit_topn_baselines(
    prepared: Prepared,
    protocol: TopNProtocol = TopNProtocol(),
    progress: Progress | None = None,
    config: TopNBaselineConfig | None = None,
    rating: tuple[BiasPredictor, MatrixFactorization] | None = None,
    names: Sequence[str] = NAMES,
) -> tuple[dict[str, Ranker], dict[str, Any]]:
    """name → fitted ranker and name → {chosen settings, validation NDCG@k of the choice
    and of every grid point}, for each of ``names`` (default all of ``NAMES``, in that
    order). Fit on ``prepared.train_ratings`` only.

    ``rating``: μ + b_i + b_u and MF as ``fit_rating_baselines(prepared, config.rating)``
    returns them, where the caller has them already (they are fit here otherwise, only if
    one of ``names`` needs them)."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"top-N baselines {unknown}: not among {list(NAMES)}")
    config = config or TopNBaselineConfig()
    say = progress or (lambda _msg: None)
    validation = Validation.build(prepared, protocol, config.supports, config.k)
    rows, n_items = prepared.train_ratings, len(prepared.tables.item_ids)
    popularity = training_popularity(rows, n_items)
    co_rated = functools.cache(lambda: gram(rows, n_items))  # shared by three grids
    rating_fit = functools.cache(lambda: rating or fit_rating_baselines(prepared, config.rating))
    grids: dict[str, Callable[[], Iterable[Candidate]]] = {
        "popularity": lambda: [({}, PopularityRanker(popularity))],
        "item_knn": lambda: _knn(co_rated(), config, popularity),
        "user_knn": lambda: _user_knn(
            Neighbours.from_rows(rows, n_items, protocol.threshold), config, popularity
        ),
        "ease": lambda: _ease(co_rated(), config, popularity),
        "ease_liked": lambda: _ease_liked(
            co_rated(), liked_gram(rows, n_items, protocol.threshold), config, popularity
        ),
        "rp3beta": lambda: _walk(rows, n_items, config, popularity),
        "implicit_als": lambda: _als(rows, n_items, config, popularity),
        "baseline_predictor": lambda: _bias(rating_fit()[0], config),
        "mf_fold_in": lambda: _mf(rating_fit()[1]),
    }
    rankers: dict[str, Ranker] = {}
    info: dict[str, Any] = {}
    for name in (n for n in NAMES if n in names):
        rankers[name], info[name] = pick(grids[name](), validation)
        say(f"top-N baseline {name}: {info[name]['chosen']}")
    return rankers, info
