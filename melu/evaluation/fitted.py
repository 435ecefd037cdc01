"""The baselines fitted once per evaluation, with the settings picked on validation users.

``fit_baselines`` fits the global mean, the shrunk item mean, the pooled (non-meta) model
and its fine-tune learning rate, μ + b_i + b_u and biased MF (users folded in from their
support) on the training data; ``Fitted`` holds them for every scenario of ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from melu.bundle import Bundle
from melu.evaluation.baselines import (
    BaselineConfig,
    ItemMean,
    fit_item_mean,
    fit_pooled,
    global_mean,
    pick_finetune_lr,
)
from melu.evaluation.bias import BiasPredictor, fit_bias_predictor
from melu.evaluation.mf import MatrixFactorization, fit_mf
from melu.model.estimator import Params, PreferenceEstimator
from melu.prepare import Prepared
from melu.tasks import TaskSet

Progress = Callable[[str], None]


@dataclass
class Fitted:
    """The fitted baselines and the settings picked on the validation users."""

    mu: float
    item_mean: ItemMean
    pooled_model: PreferenceEstimator
    pooled_params: Params
    pooled_epoch: int
    finetune_lr: float
    bias: BiasPredictor  # μ + b_i + b_u, from all training ratings
    mf: MatrixFactorization  # biased MF, users folded in from their support

    def support_predict(self, name: str, tasks: TaskSet) -> Tensor:
        """Query predictions (T, Q) of a ``SUPPORT_BASELINES`` method from the supports."""
        return (self.bias if name == "baseline_predictor" else self.mf).predict(tasks)


def fit_baselines(
    bundle: Bundle, prepared: Prepared, options: BaselineConfig, progress: Progress
) -> Fitted:
    train, val, tables = prepared.tasks["train"], prepared.tasks["validation"], prepared.tables
    mu = global_mean(train)
    item = fit_item_mean(train, val, len(tables.item_ids), options.shrinkage_grid)
    model, params, epoch = fit_pooled(bundle.config, prepared.features, train, val, tables, options)
    progress("fitted pooled model")
    meta = bundle.config.meta
    lr = pick_finetune_lr(
        model, params, val, tables, steps=meta.inner_steps, base_lr=meta.inner_lr,
        scales=options.finetune_lr_scales,
    )  # fmt: skip
    bias, mf = fit_rating_baselines(prepared, options)
    return Fitted(mu, item, model, params, epoch, lr, bias, mf)


def fit_rating_baselines(
    prepared: Prepared, options: BaselineConfig
) -> tuple[BiasPredictor, MatrixFactorization]:
    """μ + b_i + b_u and MF on all training ratings, settings picked on validation users."""
    rows, val = prepared.train_ratings, prepared.tasks["validation"]
    n_users, n_items = len(prepared.tables.user_ids), len(prepared.tables.item_ids)
    scale = prepared.features.rating_scale
    bias = fit_bias_predictor(
        rows, val, n_items, scale, options.item_shrinkage_grid, options.user_shrinkage_grid
    )
    return bias, fit_mf(rows, val, n_users, n_items, scale, options.mf)
