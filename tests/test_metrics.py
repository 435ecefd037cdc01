"""Metrics against values computed by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from melu.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    mae_all,
    per_user,
    rmse_all,
    summarize,
    user_mae,
    user_ndcg,
    user_rmse,
)

L3 = math.log2(3)

# two users; the second has a padding slot (its prediction must not count)
PRED = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
TRUE = torch.tensor([[2.0, 2.0, 5.0], [5.0, 3.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_mae_and_rmse_per_user_and_over_all_ratings() -> None:
    # user 1: |1-2|, 0, |3-5| → 3/3 ; user 2: 1, 2 → 3/2
    assert user_mae(PRED, TRUE, MASK).tolist() == pytest.approx([1.0, 1.5])
    assert user_rmse(PRED, TRUE, MASK).tolist() == pytest.approx([math.sqrt(5 / 3), math.sqrt(2.5)])
    assert mae_all(PRED, TRUE, MASK) == pytest.approx(6 / 5)
    assert rmse_all(PRED, TRUE, MASK) == pytest.approx(math.sqrt(10 / 5))


def test_a_user_without_query_rows_is_nan_and_skipped_by_the_average() -> None:
    mask = MASK.clone()
    mask[1] = False
    assert math.isnan(float(user_mae(PRED, TRUE, mask)[1]))
    assert math.isnan(float(user_ndcg(PRED, TRUE, mask, 3)[1]))
    figures = summarize(PRED, TRUE, mask, bootstrap_indices(2, 50, 0))
    assert figures["mae"] == pytest.approx(1.0)


def test_ndcg_by_hand() -> None:
    pred = torch.tensor([[0.1, 0.9, 0.5]])
    true = torch.tensor([[5.0, 3.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # ranking by score: rating 3 (gain 7), rating 1 (gain 1), rating 5 (gain 31)
    dcg3 = 7 + 1 / L3 + 31 / 2
    idcg3 = 31 + 7 / L3 + 1 / 2
    assert float(user_ndcg(pred, true, mask, 3)[0]) == pytest.approx(dcg3 / idcg3)
    assert float(user_ndcg(pred, true, mask, 1)[0]) == pytest.approx(7 / 31)
    assert float(user_ndcg(pred, true, mask, 10)[0]) == pytest.approx(dcg3 / idcg3)
    perfect = user_ndcg(true, true, mask, 3)
    assert float(perfect[0]) == pytest.approx(1.0)


def test_ndcg_averages_over_ties() -> None:
    pred = torch.full((1, 3), 2.0)
    true = torch.tensor([[5.0, 3.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    mean_gain = (31 + 7 + 1) / 3  # every position of the tie gets the mean gain
    assert float(user_ndcg(pred, true, mask, 1)[0]) == pytest.approx(mean_gain / 31)
    expected = mean_gain * (1 + 1 / L3 + 1 / 2) / (31 + 7 / L3 + 1 / 2)
    assert float(user_ndcg(pred, true, mask, 3)[0]) == pytest.approx(expected)
    # a partial tie: the top item is alone, the two others tie
    pred = torch.tensor([[3.0, 1.0, 1.0]])
    dcg = 31 + ((7 + 1) / 2) * (1 / L3 + 1 / 2)
    assert float(user_ndcg(pred, true, mask, 3)[0]) == pytest.approx(dcg / (31 + 7 / L3 + 1 / 2))


def test_ndcg_ignores_padding_even_with_the_highest_score() -> None:
    pred = torch.tensor([[1.0, 2.0, 9.0]])
    true = torch.tensor([[4.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    dcg = 3 + 15 / L3  # rating 2 first (gain 3), then rating 4 (gain 15)
    assert float(user_ndcg(pred, true, mask, 10)[0]) == pytest.approx(dcg / (15 + 3 / L3))


def test_per_user_has_every_figure() -> None:
    values = per_user(PRED, TRUE, MASK)
    assert set(values) == {"mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10"}
    assert all(v.shape == (2,) for v in values.values())


def test_bootstrap_interval_is_seeded_and_has_the_normal_width() -> None:
    values = np.random.default_rng(1).normal(0.0, 1.0, size=400)
    index = bootstrap_indices(400, 2000, seed=3)
    lo, hi = bootstrap_ci(values, index)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.15)
    assert (lo, hi) == bootstrap_ci(values, bootstrap_indices(400, 2000, seed=3))
    assert (lo, hi) != bootstrap_ci(values, bootstrap_indices(400, 2000, seed=4))
    assert bootstrap_ci(np.full(10, 0.7), bootstrap_indices(10, 100)) == pytest.approx((0.7, 0.7))


def test_summarize_reports_intervals_around_each_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    true = torch.randint(1, 6, (50, 10), generator=gen).float()
    pred = true + torch.randn(50, 10, generator=gen)
    mask = torch.rand(50, 10, generator=gen) < 0.8
    figures = summarize(pred, true, mask, bootstrap_indices(50, 500, 0))
    for name in ("mae", "rmse", "ndcg@1", "ndcg@10"):
        lo, hi = figures[f"{name}_ci"]
        assert lo <= figures[name] <= hi
    assert figures["mae"] == pytest.approx(float(user_mae(pred, true, mask).mean()))
