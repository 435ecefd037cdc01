"""Scenario invariants of the task protocol, on real ml-100k and on small built data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from melu.config import DataConfig
from melu.data.movielens import load_movielens
from melu.prepare import Prepared, build
from melu.splits import split_users
from melu.tasks import EVAL_SCENARIOS, TaskSet, build_scenarios

PRE_NEW = ("train", "validation", "warm", "user_cold")  # existing items only


def pairs(tasks: TaskSet, item_ids: np.ndarray, part: str) -> set[tuple[int, int]]:
    """(user id, item id) of the real rows of ``part`` ("support" or "query")."""
    mask = getattr(tasks, f"{part}_mask").numpy()
    items = item_ids[getattr(tasks, f"{part}_items").numpy()]
    users = np.broadcast_to(tasks.user_ids.numpy()[:, None], mask.shape)
    return set(zip(users[mask].tolist(), items[mask].tolist(), strict=True))


def all_pairs(tasks: TaskSet, item_ids: np.ndarray) -> set[tuple[int, int]]:
    return pairs(tasks, item_ids, "support") | pairs(tasks, item_ids, "query")


def test_no_query_rating_is_ever_trained_on(ml100k: Prepared) -> None:
    ids = ml100k.tables.item_ids.numpy()
    trained = all_pairs(ml100k.tasks["train"], ids)
    assert trained
    for name in ("validation", *EVAL_SCENARIOS):
        assert not pairs(ml100k.tasks[name], ids, "query") & trained, name
    assert trained <= pairs(ml100k.tasks["warm"], ids, "support")  # training = warm support


def test_new_items_only_where_they_belong(ml100k: Prepared) -> None:
    ids = ml100k.tables.item_ids.numpy()
    new = set(ml100k.catalog.loc[ml100k.catalog["is_new"], "item_id"].tolist())
    assert len(new) == round(0.2 * 1682)
    for name in PRE_NEW:
        assert not {i for _, i in all_pairs(ml100k.tasks[name], ids)} & new, name
    for name in ("item_cold", "user_item_cold"):
        assert {i for _, i in all_pairs(ml100k.tasks[name], ids)} <= new, name


def test_user_roles_are_disjoint(ml100k: Prepared) -> None:
    users = {name: set(t.user_ids.tolist()) for name, t in ml100k.tasks.items()}
    train = users["train"] | users["warm"] | users["item_cold"]
    assert not train & (users["validation"] | users["user_cold"] | users["user_item_cold"])
    assert not users["validation"] & (users["user_cold"] | users["user_item_cold"])
    assert users["train"] <= users["warm"]


def test_eval_tasks_have_bounded_support_and_full_query(ml100k: Prepared) -> None:
    for name in ("validation", *EVAL_SCENARIOS):
        tasks = ml100k.tasks[name]
        assert len(tasks) > 0, name
        sizes = tasks.support_sizes()
        assert int(sizes.min()) >= 3 and int(sizes.max()) <= 90, name
        assert (tasks.query_mask.sum(1) == 10).all(), name
        assert (tasks.support_items[~tasks.support_mask] == 0).all()
        assert (tasks.support_ratings[~tasks.support_mask] == 0).all()
    train = ml100k.tasks["train"]
    assert (train.query_mask.sum(1) >= 1).all() and (train.support_sizes() >= 3).all()


@pytest.fixture(scope="module")
def ml100k_data(data_dir: Path):
    return load_movielens("ml-100k", data_dir)


def test_query_order_time_takes_each_users_last_ratings(ml100k_data) -> None:
    prepared = build(ml100k_data, DataConfig(query_order="time"))
    ids = prepared.tables.item_ids.numpy()
    stamp = ml100k_data.ratings.set_index(["user_id", "item_id"])["timestamp"]
    for name in ("warm", "user_cold", "item_cold"):
        tasks = prepared.tasks[name]
        for part in ("support", "query"):
            mask = getattr(tasks, f"{part}_mask").numpy()
            items = ids[getattr(tasks, f"{part}_items").numpy()]
            users = np.broadcast_to(tasks.user_ids.numpy()[:, None], mask.shape)
            keys = pd.MultiIndex.from_arrays([users[mask], items[mask]])
            times = np.full(mask.shape, np.nan)
            times[mask] = stamp.loc[keys].to_numpy()
            if part == "support":
                latest_support = np.nanmax(times, axis=1)
            else:
                assert (np.nanmin(times, axis=1) >= latest_support).all(), name


def test_user_split_random_is_seeded_and_complete(ml100k_data) -> None:
    ratings = ml100k_data.ratings
    by_time = split_users(ratings, DataConfig())
    random_a = split_users(ratings, DataConfig(user_split="random", seed=1))
    random_b = split_users(ratings, DataConfig(user_split="random", seed=1))
    random_c = split_users(ratings, DataConfig(user_split="random", seed=2))
    assert all(np.array_equal(random_a[k], random_b[k]) for k in random_a)
    assert not np.array_equal(random_a["test"], random_c["test"])
    assert not np.array_equal(random_a["test"], by_time["test"])
    everyone = np.concatenate(list(random_a.values()))
    assert np.array_equal(np.sort(everyone), np.arange(1, 944))
    first = ratings.groupby("user_id")["timestamp"].min()
    assert first[by_time["train"]].max() <= first[by_time["test"]].min()


def test_small_built_data_gives_exact_task_shapes() -> None:
    """Two train users with 15 and 30 ratings, one test user with 20, on 50 old items."""
    rows = [(1, i, 1 + i % 5, 100 + i) for i in range(15)]
    rows += [(2, i, 1 + (i * 3) % 5, 200 + i) for i in range(30)]
    rows += [(3, i, 5, 300 + i) for i in range(20)]
    rows += [(4, i, 4, 400 + i) for i in range(5)]  # too few ratings: no task
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    roles = {"train": np.array([1, 2]), "validation": np.array([4]), "test": np.array([3])}
    config = DataConfig(min_ratings=13, max_support=12)
    out = build_scenarios(
        ratings, roles, np.array([], dtype=np.int64), np.arange(1, 5), np.arange(50), config
    )
    warm, cold = out["warm"], out["user_cold"]
    assert warm.user_ids.tolist() == [1, 2] and warm.support_sizes().tolist() == [5, 12]
    assert cold.user_ids.tolist() == [3] and cold.support_sizes().tolist() == [10]
    assert len(out["validation"]) == 0 and len(out["item_cold"]) == 0
    # train: user 1's 5 non-held-out ratings → query 2, support 3; user 2's 20 → 10 + 10
    assert out["train"].query_mask.sum(1).tolist() == [2, 10]
    assert out["train"].support_sizes().tolist() == [3, 10]
    assert out["warm"].user_rows.tolist() == [0, 1]
    values = dict(zip(range(50), range(50), strict=True))
    got = out["warm"].support_ratings[0][out["warm"].support_mask[0]].tolist()
    items = out["warm"].support_items[0][out["warm"].support_mask[0]].tolist()
    assert got == [1 + values[i] % 5 for i in items]


def test_warm_users_and_learned_vocabularies_come_from_training_ratings(ml100k: Prepared) -> None:
    """Every warm user was meta-trained on; every item with its own id embedding, and the
    catalog's popularity, come from all training ratings (item_stats="all", the default),
    which never hold a held-out warm query or an evaluation user's rating."""
    train, warm = ml100k.tasks["train"], ml100k.tasks["warm"]
    assert ml100k.config.item_stats == "all"
    assert set(warm.user_ids.tolist()) == set(train.user_ids.tolist())
    item_ids = ml100k.tables.item_ids
    counts = torch.bincount(ml100k.train_ratings.item_rows.long(), minlength=len(item_ids))
    id_field = next(f for f in ml100k.features.item_fields if f.name == "item")
    with_id = {int(v) for v in id_field.vocab}
    trained = {int(item_ids[i]) for i in torch.nonzero(counts >= 5).flatten().tolist()}
    assert with_id == trained
    popularity = dict(zip(ml100k.catalog["item_id"], ml100k.catalog["n_ratings"], strict=True))
    assert all(popularity[int(item_ids[i])] == int(c) for i, c in enumerate(counts.tolist()))
