"""μ + b_i + b_u and MF with fold-in: the math by hand and against a direct solve, and
fitting on training users only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melu.evaluation.bias import BiasPredictor, fit_bias_predictor, validation_mae
from melu.evaluation.mf import MatrixFactorization, MFConfig, fit_als, fit_mf, ridge_solve
from melu.prepare import Prepared, RatingRows
from melu.tasks import TaskSet

ROWS = RatingRows(  # users 0..2, items 0..3 (item 3 never rated in training)
    torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32),
    torch.tensor([0, 1, 0, 2, 1, 2], dtype=torch.int32),
    torch.tensor([5.0, 3.0, 4.0, 2.0, 1.0, 3.0]),
)


def one_task(items: list[int], ratings: list[float], query: list[int]) -> TaskSet:
    s, q = len(items), len(query)
    return TaskSet(
        torch.tensor([0]), torch.tensor([1]),
        torch.tensor([items], dtype=torch.int32), torch.tensor([ratings]),
        torch.ones(1, s, dtype=torch.bool),
        torch.tensor([query], dtype=torch.int32), torch.full((1, q), 3.0),
        torch.ones(1, q, dtype=torch.bool),
    )  # fmt: skip


def test_baseline_predictor_by_hand() -> None:
    mu = 18 / 6
    model = BiasPredictor.fit(ROWS, n_items=4, scale=(1.0, 5.0), item_shrinkage=2.0,
                              user_shrinkage=3.0)  # fmt: skip
    b_i = [(2 + 1) / (2 + 2), (0 - 2) / (2 + 2), (-1 + 0) / (2 + 2), 0.0]
    assert model.mu == pytest.approx(mu)
    assert model.item_bias().tolist() == pytest.approx(b_i)
    task = one_task([0, 3], [5.0, 4.0], [1, 2, 3])
    b_u = ((5 - mu - b_i[0]) + (4 - mu - b_i[3])) / (2 + 3)  # shrunk support residual
    assert model.user_bias(task).tolist() == pytest.approx([b_u])
    expected = [mu + b_i[1] + b_u, mu + b_i[2] + b_u, mu + b_u]
    assert model.predict(task)[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_baseline_predictor_clips_to_the_scale() -> None:
    model = BiasPredictor.fit(ROWS, 4, (1.0, 5.0), 0.0, 0.0)
    assert model.predict(one_task([0], [5.0], [0])).item() == 5.0  # 3 + 2 + 2 = 7 → 5


def test_fold_in_equals_a_direct_least_squares_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    k, n_items = 3, 6
    model = MatrixFactorization(3.5, torch.randn(n_items, k, generator=gen, dtype=torch.float64),
                                torch.randn(n_items, generator=gen, dtype=torch.float64),
                                reg=0.7, bias_reg=2.0, scale=(1.0, 5.0))  # fmt: skip
    items = torch.tensor([[0, 2, 5, 1], [3, 4, 0, 0]])
    ratings = torch.tensor([[5.0, 3.0, 4.0, 1.0], [2.0, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    factors, bias = model.fold_in(items, ratings, mask)
    for t in range(2):
        idx = items[t][mask[t]].numpy()
        x = np.hstack([model.item_factors.numpy()[idx], np.ones((len(idx), 1))])
        y = ratings[t][mask[t]].double().numpy() - 3.5 - model.item_bias.numpy()[idx]
        root = np.diag(np.sqrt([0.7] * k + [2.0]))  # ridge as extra rows: √λ·I w ≈ 0
        w = np.linalg.lstsq(np.vstack([x, root]), np.concatenate([y, np.zeros(k + 1)]))[0]
        assert factors[t].numpy() == pytest.approx(w[:k], abs=1e-10)
        assert bias[t].item() == pytest.approx(w[k], abs=1e-10)


def test_ridge_solve_ignores_masked_rows() -> None:
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    y = torch.randn(1, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    penalty = torch.ones(2, dtype=torch.float64)
    x2, y2 = x.clone(), y.clone()
    x2[0, 3], y2[0, 3] = 100.0, -50.0
    assert ridge_solve(x, y, mask, penalty).allclose(ridge_solve(x2, y2, mask, penalty))


def test_als_fits_the_training_ratings_and_leaves_unrated_items_at_zero() -> None:
    config = MFConfig(iterations=20)
    model = fit_als(ROWS, 3, 4, (1.0, 5.0), rank=2, reg=1e-3, config=config)
    assert model.item_factors[3].abs().max() == 0 and model.item_bias[3] == 0
    task = one_task([0, 1], [5.0, 3.0], [0, 1])  # user 0's own ratings, folded in
    assert model.predict(task)[0].tolist() == pytest.approx([5.0, 3.0], abs=0.05)


def test_real_data_fits_use_training_users_only(ml100k: Prepared) -> None:
    rows, tasks = ml100k.train_ratings, ml100k.tasks
    n_users, n_items = len(ml100k.tables.user_ids), len(ml100k.tables.item_ids)
    scale = ml100k.features.rating_scale
    trained_items = set(rows.item_rows.tolist())
    cold_only = set(tasks["user_cold"].query_items[tasks["user_cold"].query_mask].tolist())
    cold_only -= trained_items  # items only evaluation users rated
    bias = fit_bias_predictor(rows, tasks["validation"], n_items, scale)
    mf = fit_mf(rows, tasks["validation"], n_users, n_items, scale,
                MFConfig(ranks=(4,), regs=(5.0,), iterations=3))  # fmt: skip
    for item in cold_only:
        assert bias.item_bias()[item] == 0 and mf.item_bias[item] == 0
    assert mf.rank == 4 and bias.mu == pytest.approx(float(rows.ratings.double().mean()))
    for name in ("warm", "user_cold"):
        assert validation_mae(bias.predict(tasks[name]), tasks[name]) < 0.8
        assert validation_mae(mf.predict(tasks[name]), tasks[name]) < 0.8
