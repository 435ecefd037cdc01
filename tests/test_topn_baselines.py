"""Top-N baselines: EASE^R against a direct constrained solve, item-kNN and user-kNN by hand,
popularity, implicit ALS fold-in, settings picked on validation users only, and on real
ML-100K."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from melu.config import DataConfig
from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.mf import MFConfig
from melu.evaluation.topn import Supports, TopNProtocol, training_popularity
from melu.evaluation.topn_als import ALSSettings, fit_implicit_als
from melu.evaluation.topn_baselines import (
    NAMES,
    PopularityRanker,
    TopNBaselineConfig,
    Validation,
    _walk,
    fit_topn_baselines,
)
from melu.evaluation.topn_item_item import (
    ItemItemRanker,
    cosine,
    ease,
    gram,
    keep_neighbours,
    liked_gram,
)
from melu.evaluation.topn_user_knn import Neighbours, UserKnnRanker
from melu.model import ranking_stats
from melu.prepare import Prepared, RatingRows, prepare

FAST_RATING = BaselineConfig(mf=MFConfig(ranks=(4,), regs=(5.0,), iterations=3))
SMALL = TopNBaselineConfig(
    knn_neighbours=(0, 5), ease_lambdas=(10.0, 100.0), liked_lambdas=(10.0, 100.0),
    walk_settings=((0.5, 0.0), (1.0, 0.5)), user_knn_alphas=(1.0, 2.0), user_knn_neighbours=(0, 2),
    als_factors=(4,), als_regularization=(1.0,), als_alpha=(1.0, 10.0), als_iterations=(5,),
    rating=FAST_RATING,
)  # fmt: skip
PROTOCOL = TopNProtocol(min_ratings=15, min_heldout=5)


def rows_of(pairs: list[tuple[int, int]], ratings: list[float] | None = None) -> RatingRows:
    users, items = zip(*pairs, strict=True)
    values = ratings if ratings is not None else [4.0] * len(pairs)
    return RatingRows(
        torch.tensor(users, dtype=torch.int32), torch.tensor(items, dtype=torch.int32),
        torch.tensor(values),
    )  # fmt: skip


def supports(items: list[list[int]], ratings: list[list[float]] | None = None) -> Supports:
    it = torch.tensor(items, dtype=torch.long).reshape(len(items), -1)
    r = (
        torch.tensor(ratings).reshape(it.shape)
        if ratings is not None
        else torch.full(it.shape, 4.0)
    )
    return Supports(torch.arange(len(items)), it, r, torch.ones(it.shape, dtype=torch.bool))


def test_ease_equals_a_direct_constrained_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(12, 6, generator=gen) < 0.4).double()  # binary users × items
    x[:, 5] = 0  # an item nobody rated
    pairs = [(int(u), int(i)) for u, i in x.nonzero()]
    g, lam = gram(rows_of(pairs), 6), 1.5
    assert torch.equal(g, x.T @ x)
    b = ease(g, lam)
    for j in range(6):  # column j: ridge regression of X_j on the other columns, B_jj = 0
        rest = [i for i in range(6) if i != j]
        a = x[:, rest].T @ x[:, rest] + lam * torch.eye(5, dtype=torch.float64)
        direct = torch.linalg.solve(a, x[:, rest].T @ x[:, j])
        assert b[rest, j].numpy() == pytest.approx(direct.numpy(), abs=1e-12)
        assert b[j, j] == 0
    assert b[5].abs().max() == 0 and b[:, 5].abs().max() == 0


def test_liked_target_ease_counts_liked_co_ratings_and_solves_for_them() -> None:
    """XᵀY counts (rated j, liked i) pairs; the baseline's B regresses each item's likes on
    the other items' ratings (diag 0), and ranks what co-raters liked above what they rated
    low."""
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 2), (3, 3)]
    ratings = [5.0, 5.0, 2.0, 4.0, 4.0, 3.0, 1.0, 5.0]
    rows = rows_of(pairs, ratings)
    y = torch.zeros(4, 5, dtype=torch.float64)
    x = torch.zeros(4, 5, dtype=torch.float64)
    for (u, i), r in zip(pairs, ratings, strict=True):
        x[u, i] = 1.0
        y[u, i] = float(r >= 4)
    assert torch.equal(liked_gram(rows, 5, 4.0), x.T @ y)
    b = ranking_stats.liked_weights(gram(rows, 5), liked_gram(rows, 5, 4.0), 0.5).double()
    for i in range(5):
        rest = [j for j in range(5) if j != i]
        a = x[:, rest].T @ x[:, rest] + 0.5 * torch.eye(4, dtype=torch.float64)
        direct = torch.linalg.solve(a, x[:, rest].T @ y[:, i])
        assert b[rest, i].numpy() == pytest.approx(direct.numpy(), abs=1e-5)
    ranker = ItemItemRanker(b.float(), "binary", training_popularity(rows, 5))
    s = ranker.scores(supports([[0]]))[0]
    assert s[1] > s[2]  # both co-rated with item 0 twice; item 1 was liked, item 2 was not


def test_item_knn_cosine_by_hand() -> None:
    rows = rows_of([(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 3)])
    sim = cosine(gram(rows, 5))
    c01, c02, c12 = 2 / np.sqrt(2 * 3), 1 / np.sqrt(2 * 2), 2 / np.sqrt(3 * 2)
    expected = [[0, c01, c02, 0, 0], [c01, 0, c12, 0, 0], [c02, c12, 0, 0, 0],
                [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]  # fmt: skip
    assert sim.numpy() == pytest.approx(np.array(expected), abs=1e-12)
    popularity = training_popularity(rows, 5)
    binary = ItemItemRanker(sim.float(), "binary", popularity)
    s = binary.scores(supports([[0]]))[0]
    assert s[1].item() == pytest.approx(c01, rel=1e-5) and s[2].item() == pytest.approx(
        c02, rel=1e-5
    )
    assert s[3] > s[4]  # no co-rating with the support: popularity breaks the tie
    weighted = ItemItemRanker(sim.float(), "rating", popularity).scores(
        supports([[0, 2]], [[5, 2]])
    )
    assert weighted[0, 1].item() == pytest.approx(5 * c01 + 2 * c12, rel=1e-5)
    top1 = ItemItemRanker(keep_neighbours(sim, 1).float(), "binary", popularity)
    assert top1.scores(supports([[0]]))[0, 2].item() == pytest.approx(0.0, abs=1e-5)  # cut


def test_user_knn_by_hand() -> None:
    """sim = overlap / √|X_v|, w = sim^α (top-K kept), scores = w·X or w·Y, by hand on four
    training users; a support sharing two films with a user weighs it 2^α / 1^α more."""
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 3), (2, 1), (2, 2), (2, 4), (2, 3), (3, 4)]
    ratings = [5.0, 5.0, 2.0, 4.0, 5.0, 4.0, 5.0, 1.0, 3.0, 4.0]
    rows = rows_of(pairs, ratings)
    neighbours = Neighbours.from_rows(rows, 6, threshold=4.0)
    popularity = training_popularity(rows, 6)
    batch = supports([[1, 2]])
    sim = np.array([2 / np.sqrt(3), 0.0, 2 / np.sqrt(4), 0.0])  # overlap {1, 2} / √|X_v|
    x = np.zeros((4, 6))
    y = np.zeros((4, 6))
    for (u, i), r in zip(pairs, ratings, strict=True):
        x[u, i] = 1.0
        y[u, i] = float(r >= 4.0)
    for alpha in (1.0, 2.0):
        w = sim**alpha
        rated = UserKnnRanker(neighbours, alpha, 0, "rated", popularity)
        assert rated.similarity(batch)[0].numpy() == pytest.approx(w, rel=1e-6)
        got = rated.scores(batch)[0].numpy()
        assert got[[0, 3, 4]] == pytest.approx((w @ x)[[0, 3, 4]], rel=1e-5)
        liked = UserKnnRanker(neighbours, alpha, 0, "liked", popularity).scores(batch)[0]
        assert liked.numpy()[[0, 3, 4]] == pytest.approx((w @ y)[[0, 3, 4]], rel=1e-5, abs=1e-5)
    one = UserKnnRanker(neighbours, 1.0, 1, "rated", popularity)  # user 0 only (2/√3 > 2/2)
    assert one.similarity(batch)[0].numpy() == pytest.approx([2 / np.sqrt(3), 0, 0, 0], rel=1e-6)
    assert one.scores(batch)[0, 3] < one.scores(batch)[0, 0]  # item 3 only via user 2, cut
    empty = UserKnnRanker(neighbours, 2.0, 0, "rated", popularity).scores(supports([[], []]))
    assert torch.equal(empty.argsort(1, descending=True)[0], popularity.argsort(descending=True))


def test_rp3beta_scores_the_walk_from_the_support_over_catalog_rows() -> None:
    """The baseline's grid is RP³β on who rated what (catalog row 0 a real item, unlike the
    head's unknown id 0), a support scoring Σ_j W[j, :], each (α, β) of the grid offered."""
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 0), (3, 3)]
    rows = rows_of(pairs)
    x = torch.zeros(4, 5)
    for u, i in pairs:
        x[u, i] = 1.0
    config = dataclasses.replace(SMALL, weightings=("binary",))
    grid = list(_walk(rows, 5, config, training_popularity(rows, 5)))
    assert [(g["alpha"], g["beta"]) for g, _ in grid] == list(SMALL.walk_settings)
    for settings, ranker in grid:
        w = ranking_stats.walk_weights(x, settings["alpha"], settings["beta"])
        assert float(w[0].abs().sum()) > 0  # row 0 is a catalog item here
        s = ranker.scores(supports([[0, 2]]))[0]
        assert s[[1, 3]] == pytest.approx(w[0, [1, 3]] + w[2, [1, 3]], rel=1e-4)
        assert s[4] < s[3]  # never rated: only the tie-break


def test_popularity_ranks_by_training_count() -> None:
    rows = rows_of([(0, 2), (1, 2), (2, 2), (0, 0), (1, 0), (2, 3)])
    ranker = PopularityRanker(training_popularity(rows, 4))
    scores = ranker.scores(supports([[1], [3]]))
    assert scores.shape == (2, 4) and torch.equal(scores[0], scores[1])
    assert torch.argsort(scores[0], descending=True, stable=True).tolist() == [2, 0, 3, 1]


def test_implicit_als_folds_in_and_ranks_co_rated_items_up() -> None:
    block = [(u, i) for u in range(20) for i in range(10)]  # users 0..19 rate items 0..9
    block += [(u, i) for u in range(20, 40) for i in range(10, 20)]  # the others 10..19
    rows = rows_of(block)
    ranker = fit_implicit_als(
        rows, 21, ALSSettings(4, 1.0, 10.0, 10), training_popularity(rows, 21)
    )
    scores = ranker.scores(supports([[0, 1, 2], [12, 15, 17]]))  # item 20: never rated
    assert scores.shape == (2, 21) and torch.isfinite(scores).all()
    assert scores[0, 3:10].min() > scores[0, 10:].max()
    assert scores[1, [10, 11, 13, 14, 16, 18, 19]].min() > scores[1, :10].max()
    empty = ranker.scores(supports([[]]))  # the no-ratings list
    assert torch.isfinite(empty).all()


def write_ml100k(root: Path, n_users: int = 60, n_items: int = 50) -> Path:
    """A small ml-100k folder: two taste groups over the items, users joining over time."""
    rng = np.random.default_rng(0)
    folder = root / "ml-100k"
    folder.mkdir()
    users = [f"{u}|{20 + u % 40}|{'MF'[u % 2]}|other|{10000 + u}" for u in range(1, n_users + 1)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    flags = "|".join(["0"] * 18)
    items = [f"{i}|Movie {i} ({1990 + i // 10})|01-Jan-{1990 + i // 10}||url|1|{flags}"
             for i in range(1, n_items + 1)]  # fmt: skip
    (folder / "u.item").write_text("\n".join(items) + "\n")
    lines = []
    for u in range(1, n_users + 1):
        own = np.arange(1, n_items + 1)[(np.arange(n_items) % 2) == u % 2]
        other = np.setdiff1d(np.arange(1, n_items + 1), own)
        picked = [*rng.choice(own, 20, replace=False), *rng.choice(other, 6, replace=False)]
        for k, item in enumerate(picked):
            rating = int(rng.integers(4, 6)) if k < 20 else int(rng.integers(1, 4))
            lines.append(f"{u}\t{item}\t{rating}\t{880000000 + 1000 * u + k}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    root = write_ml100k(tmp_path_factory.mktemp("data"))
    return prepare(DataConfig(dataset="ml-100k"), root, root / "cache")


def _changed(rows: RatingRows, n_items: int) -> RatingRows:
    """Other items (every row moved by 7 items, duplicates dropped) and flipped ratings."""
    items = (rows.item_rows.long() + 7) % n_items
    pair = rows.user_rows.long() * n_items + items
    keep = torch.from_numpy(np.unique(pair.numpy(), return_index=True)[1])
    return RatingRows(rows.user_rows[keep], items[keep].int(), 6.0 - rows.ratings[keep])


def _changed_tasks(prepared: Prepared) -> dict:
    """The test scenarios' tasks with flipped ratings and moved items."""
    n_items, out = len(prepared.tables.item_ids), dict(prepared.tasks)
    for name in ("user_cold", "user_item_cold"):
        t = prepared.tasks[name]
        out[name] = dataclasses.replace(
            t, support_items=(t.support_items + 7) % n_items, support_ratings=6.0 - t.support_ratings,
            query_items=(t.query_items + 7) % n_items, query_ratings=6.0 - t.query_ratings,
        )  # fmt: skip
    return out


def _scores(rankers: dict, batch: Supports) -> dict[str, torch.Tensor]:
    return {name: ranker.scores(batch) for name, ranker in rankers.items()}


def test_fit_uses_validation_users_and_never_test_users(small: Prepared) -> None:
    rankers, info = fit_topn_baselines(small, PROTOCOL, config=SMALL)
    assert tuple(rankers) == NAMES and tuple(info) == NAMES
    assert info["ease"]["chosen"]["lambda"] in SMALL.ease_lambdas and len(info["ease"]["grid"]) == 4
    n_items = len(small.tables.item_ids)
    batch = supports([[0, 2, 4], [1, 3, 5]], [[5, 4, 5], [2, 5, 4]])
    before = _scores(rankers, batch)
    for scores in [*before.values(), *_scores(rankers, supports([[], []])).values()]:
        assert scores.shape == (2, n_items) and torch.isfinite(scores).all()
    test = _changed(small.user_ratings["test"], n_items)
    assert len(test) > 100 and not torch.equal(test.item_rows, small.user_ratings["test"].item_rows)
    test_changed = dataclasses.replace(
        small, user_ratings={**small.user_ratings, "test": test}, tasks=_changed_tasks(small)
    )
    rankers2, info2 = fit_topn_baselines(test_changed, PROTOCOL, config=SMALL)
    assert info2 == info
    for name, scores in _scores(rankers2, batch).items():
        assert torch.equal(scores, before[name]), name
    val = small.user_ratings["validation"]
    val_changed = dataclasses.replace(
        small, user_ratings={**small.user_ratings, "validation": _changed(val, n_items)}
    )
    _, info3 = fit_topn_baselines(val_changed, PROTOCOL, config=SMALL)
    assert info3["ease"]["grid"] != info["ease"]["grid"]  # the validation users do count
    assert info3["ease_liked"]["grid"] != info["ease_liked"]["grid"]
    assert info3["rp3beta"]["grid"] != info["rp3beta"]["grid"]
    assert info3["user_knn"]["grid"] != info["user_knn"]["grid"]


def test_real_ml100k_ease_and_item_knn_beat_popularity(ml100k: Prepared) -> None:
    config = dataclasses.replace(
        SMALL, ease_lambdas=(500.0, 5000.0), knn_neighbours=(0, 100), als_factors=(32,),
        als_regularization=(30.0,), als_alpha=(1.0,), als_iterations=(5,),
    )  # fmt: skip
    rankers, _info = fit_topn_baselines(ml100k, config=config)
    at5 = Validation.build(ml100k, TopNProtocol(), (5,), 10)
    names = ("popularity", "item_knn", "user_knn", "ease")
    score = {name: at5.score(rankers[name]) for name in names}
    assert score["ease"] > score["popularity"] + 0.03
    assert score["item_knn"] > score["popularity"] + 0.02
    assert score["user_knn"] > score["popularity"] + 0.03


def test_fit_a_few_baselines_by_name(small: Prepared) -> None:
    """``names`` fits just those, the same as in a full fit; an unknown name is refused."""
    few, info = fit_topn_baselines(small, PROTOCOL, config=SMALL, names=("user_knn", "ease"))
    assert tuple(few) == ("user_knn", "ease") == tuple(info)  # NAMES' order
    full, full_info = fit_topn_baselines(small, PROTOCOL, config=SMALL)
    batch = supports([[0, 2, 4]], [[5, 4, 5]])
    for name in few:
        assert info[name] == full_info[name]
        assert torch.equal(few[name].scores(batch), full[name].scores(batch))
    with pytest.raises(ValueError, match="user_nn"):
        fit_topn_baselines(small, PROTOCOL, config=SMALL, names=("user_nn",))
