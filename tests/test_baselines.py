"""Baselines: hand-checked means on a small task set, and the pooled model on real ML-100K."""

from __future__ import annotations

import pytest
import torch

from melu.evaluation.baselines import (
    BaselineConfig,
    ItemMean,
    fit_item_mean,
    fit_pooled,
    global_mean,
    pick_finetune_lr,
    pooled_predict,
    query_mae,
    training_rows,
)
from melu.model.predict import predict_queries
from melu.prepare import Prepared
from melu.tasks import TaskSet


def make_tasks(
    support: list[list[tuple[int, float]]], query: list[list[tuple[int, float]]]
) -> TaskSet:
    """A TaskSet from per-user (item row, rating) lists, padded like ``melu.tasks``."""

    def pad(rows: list[list[tuple[int, float]]]) -> tuple[torch.Tensor, ...]:
        width = max(1, max(len(r) for r in rows))
        items = torch.zeros(len(rows), width, dtype=torch.int32)
        ratings = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for t, row in enumerate(rows):
            for j, (item, rating) in enumerate(row):
                items[t, j], ratings[t, j], mask[t, j] = item, rating, True
        return items, ratings, mask

    n = len(support)
    return TaskSet(torch.arange(n), torch.arange(n) + 1, *pad(support), *pad(query))


TRAIN = make_tasks(
    support=[[(1, 5.0), (2, 3.0)], [(1, 4.0)], [(3, 1.0)]],
    query=[[(2, 1.0)], [(2, 2.0), (1, 3.0)], [(1, 2.0)]],
)


def test_training_rows_skip_padding() -> None:
    rows = training_rows(TRAIN)
    assert len(rows) == 8
    assert sorted(rows.ratings.tolist()) == [1, 1, 2, 2, 3, 3, 4, 5]


def test_global_and_item_means_by_hand() -> None:
    mu = (5 + 3 + 4 + 1 + 1 + 2 + 3 + 2) / 8
    assert global_mean(TRAIN) == pytest.approx(mu)
    items = torch.tensor([[1, 2, 3, 4]])
    raw = ItemMean.fit(TRAIN, n_items=5, shrinkage=0.0).predict(items)
    assert raw[0].tolist() == pytest.approx([(5 + 4 + 3 + 2) / 4, (3 + 1 + 2) / 3, 1.0, mu])
    shrunk = ItemMean.fit(TRAIN, n_items=5, shrinkage=2.0).predict(items)
    expected = [(14 + 2 * mu) / 6, (6 + 2 * mu) / 5, (1 + 2 * mu) / 3, mu]
    assert shrunk[0].tolist() == pytest.approx(expected)


def test_item_mean_shrinkage_is_picked_on_validation() -> None:
    # item 3 has one training rating (1.0); validation users rate it near the global mean
    validation = make_tasks([[(1, 4.0)]], [[(3, 2.6)]])
    picked = fit_item_mean(TRAIN, validation, 5, (0.0, 1.0, 100.0))
    assert picked.shrinkage == 100.0
    validation = make_tasks([[(1, 4.0)]], [[(3, 1.0)]])
    assert fit_item_mean(TRAIN, validation, 5, (0.0, 1.0, 100.0)).shrinkage == 0.0


@pytest.fixture(scope="module")
def pooled(ml100k: Prepared):
    from melu.config import Config

    config = Config(data=ml100k.config)
    options = BaselineConfig(pooled_epochs=2)
    model, params, epoch = fit_pooled(
        config, ml100k.features, ml100k.tasks["train"].select(slice(0, 150)),
        ml100k.tasks["validation"],
        ml100k.tables, options,
    )  # fmt: skip
    return config, model, params, epoch


def test_pooled_model_fits_the_training_ratings_better_than_their_mean(
    ml100k: Prepared, pooled
) -> None:
    _, model, params, epoch = pooled
    train = ml100k.tasks["train"].select(slice(0, 150))
    pred = pooled_predict(model, params, train, ml100k.tables)
    assert pred.shape == train.query_items.shape
    assert epoch >= 1  # the validation users preferred a trained epoch to the initialisation
    mu = global_mean(train)
    assert query_mae(pred, train) < query_mae(torch.full_like(pred, mu), train) - 0.02


def test_fine_tuning_starts_from_the_pooled_model(ml100k: Prepared, pooled) -> None:
    config, model, params, _ = pooled
    val = ml100k.tasks["validation"]
    still = predict_queries(model, params, val, ml100k.tables, steps=0, lr=0.05)
    torch.testing.assert_close(still, pooled_predict(model, params, val, ml100k.tables))
    moved = predict_queries(model, params, val, ml100k.tables, steps=3, lr=0.05)
    assert not torch.allclose(moved, still)
    lr = pick_finetune_lr(
        model, params, val, ml100k.tables, steps=config.meta.inner_steps,
        base_lr=config.meta.inner_lr, scales=(0.1, 1.0),
    )  # fmt: skip
    assert lr in (pytest.approx(config.meta.inner_lr * 0.1), pytest.approx(config.meta.inner_lr))
