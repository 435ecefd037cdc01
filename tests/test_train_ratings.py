"""All training ratings (``Prepared.train_ratings``) and the K-fold user split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melu.config import DataConfig
from melu.data.movielens import load_movielens
from melu.errors import ConfigError
from melu.prepare import Prepared, load_prepared, prepare
from melu.splits import split_users


def rating_pairs(prepared: Prepared) -> set[tuple[int, int]]:
    rows = prepared.train_ratings
    users = prepared.tables.user_ids.numpy()[rows.user_rows.numpy()]
    items = prepared.tables.item_ids.numpy()[rows.item_rows.numpy()]
    return set(zip(users.tolist(), items.tolist(), strict=True))


def query_pairs(prepared: Prepared, name: str) -> set[tuple[int, int]]:
    tasks = prepared.tasks[name]
    mask = tasks.query_mask.numpy()
    items = prepared.tables.item_ids.numpy()[tasks.query_items.numpy()]
    users = np.broadcast_to(tasks.user_ids.numpy()[:, None], mask.shape)
    return set(zip(users[mask].tolist(), items[mask].tolist(), strict=True))


def test_all_training_ratings_exclude_warm_queries_and_eval_users(
    ml100k: Prepared, data_dir: Path
) -> None:
    data = load_movielens("ml-100k", data_dir)
    roles = split_users(data.ratings, ml100k.config)
    new = set(ml100k.catalog.loc[ml100k.catalog["is_new"], "item_id"].tolist())
    ours = rating_pairs(ml100k)
    assert {u for u, _ in ours} <= set(roles["train"].tolist())  # no validation/test user
    assert not {i for _, i in ours} & new  # existing items only
    warm_queries = query_pairs(ml100k, "warm")
    assert warm_queries and not ours & warm_queries
    expected = data.ratings[
        data.ratings["user_id"].isin(roles["train"]) & ~data.ratings["item_id"].isin(list(new))
    ]
    assert len(ours) == len(ml100k.train_ratings) == len(expected) - len(warm_queries)
    counts = pd.Series([u for u, _ in ours]).value_counts()
    assert counts.max() > 100 and counts.min() < 13  # heavy and light raters included
    assert ml100k.train_ratings.ratings.sum() > 0


def test_train_ratings_round_trip_through_the_cache(ml100k: Prepared) -> None:
    assert ml100k.path is not None
    again = load_prepared(ml100k.path)
    for name in ("user_rows", "item_rows", "ratings"):
        assert getattr(again.train_ratings, name).equal(getattr(ml100k.train_ratings, name))


def test_folds_give_every_user_one_test_fold(data_dir: Path) -> None:
    ratings = load_movielens("ml-100k", data_dir).ratings
    base = DataConfig(user_split="random", folds=5, seed=3)
    roles = [split_users(ratings, base.replace(fold=k)) for k in range(5)]
    tests = [set(r["test"].tolist()) for r in roles]
    assert sum(len(t) for t in tests) == ratings["user_id"].nunique()
    assert set().union(*tests) == set(ratings["user_id"].tolist())  # each user exactly once
    for k, r in enumerate(roles):
        assert all(not tests[k] & tests[j] for j in range(5) if j != k)
        parts = [set(r[n].tolist()) for n in ("train", "validation", "test")]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(parts[1]) == round(0.1 * ratings["user_id"].nunique())


def test_fold_tasks_are_disjoint_across_folds(data_dir: Path, tmp_path: Path) -> None:
    config = DataConfig(user_split="random", folds=2)
    folds = [prepare(config.replace(fold=k), data_dir, tmp_path) for k in range(2)]
    cold = [set(p.tasks["user_cold"].user_ids.tolist()) for p in folds]
    assert cold[0] and cold[1] and not cold[0] & cold[1]
    train_users = {u for u, _ in rating_pairs(folds[1])}
    assert not train_users & cold[1] and train_users & cold[0]


def test_fold_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="user_split"):
        DataConfig(folds=5)
    with pytest.raises(ConfigError, match="fold must"):
        DataConfig(user_split="random", folds=5, fold=5)
    with pytest.raises(ConfigError, match="folds must"):
        DataConfig(user_split="random", folds=1)
