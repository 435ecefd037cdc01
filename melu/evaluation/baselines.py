"""Baselines MAML must beat, fit on the training tasks only (support + query rows).

- global mean: one number, the mean training rating.
- item mean shrunk towards the global mean: ŷ_i = (Σ_u y_ui + λ·μ) / (n_i + λ); an item
  without training ratings (every new item) gets μ. λ is picked on the validation users.
- baseline predictor μ + b_i + b_u (``melu.evaluation.bias``) and MF with fold-in
  (``melu.evaluation.mf``): fit on *all* training ratings (``Prepared.train_ratings``),
  their grids below.
- pooled: the same ``PreferenceEstimator`` trained by ordinary regression (Adam on the MSE
  of all training ratings, no inner loop); the epoch is picked on the validation users.
- pooled + fine-tune: the pooled parameters adapted per user on the support by
  ``melu.model.maml.adapt`` with MAML's inner budget (steps, fast group); the inner lr is picked
  on the validation users from ``finetune_lr_scales`` × MAML's inner lr.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from melu.config import Config
from melu.evaluation.bias import ITEM_SHRINKAGE, USER_SHRINKAGE
from melu.evaluation.metrics import mae_all
from melu.evaluation.mf import MFConfig
from melu.features import FeatureSpace
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.maml import masked_mse
from melu.model.predict import predict_queries
from melu.prepare import RatingRows
from melu.tables import FeatureTables
from melu.tasks import TaskSet


@dataclass(frozen=True)
class BaselineConfig:
    """Budgets and grids of the baselines (validation users pick λ, epoch and lr)."""

    shrinkage_grid: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    pooled_epochs: int = 30
    pooled_patience: int = 3  # stop after this many epochs without a validation gain
    pooled_lr: float = 3e-3
    pooled_batch: int = 512
    finetune_lr_scales: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    seed: int = 0
    item_shrinkage_grid: tuple[float, ...] = ITEM_SHRINKAGE  # λ_i of μ + b_i + b_u
    user_shrinkage_grid: tuple[float, ...] = USER_SHRINKAGE  # λ_u of μ + b_i + b_u
    mf: MFConfig = field(default_factory=MFConfig)  # ranks, λ grid, ALS sweeps


def training_rows(tasks: TaskSet) -> RatingRows:
    """Every real support and query row of ``tasks`` as flat (user, item, rating) pairs."""
    return RatingRows(*tasks.rated_rows())


def global_mean(train: TaskSet) -> float:
    """μ = the mean of all training ratings."""
    return float(training_rows(train).ratings.double().mean())


@dataclass
class ItemMean:
    """ŷ_i = (s_i + λ·μ) / (n_i + λ) from per-item sums ``s`` (I,) and counts ``n`` (I,)."""

    sums: Tensor
    counts: Tensor
    mu: float
    shrinkage: float

    @classmethod
    def fit(cls, train: TaskSet, n_items: int, shrinkage: float) -> ItemMean:
        rows = training_rows(train)
        sums = torch.zeros(n_items, dtype=torch.float64).index_add_(
            0, rows.item_rows, rows.ratings.double()
        )
        counts = torch.bincount(rows.item_rows, minlength=n_items).double()
        return cls(sums, counts, float(rows.ratings.double().mean()), shrinkage)

    def with_shrinkage(self, shrinkage: float) -> ItemMean:
        return ItemMean(self.sums, self.counts, self.mu, shrinkage)

    def predict(self, item_rows: Tensor) -> Tensor:
        """Predictions with the shape of ``item_rows`` (e.g. (T, Q))."""
        lam = self.shrinkage
        values = (self.sums + lam * self.mu) / (self.counts + lam)
        values = torch.where(self.counts + lam > 0, values, torch.full_like(values, self.mu))
        return values[item_rows.long()].float()


def query_mae(pred: Tensor, tasks: TaskSet) -> float:
    """MAE over all real query rows of ``tasks`` (used for picking on validation)."""
    return mae_all(pred, tasks.query_ratings, tasks.query_mask)


def fit_item_mean(
    train: TaskSet, validation: TaskSet, n_items: int, grid: tuple[float, ...]
) -> ItemMean:
    """The item-mean baseline with λ from ``grid`` minimising validation query MAE."""
    base = ItemMean.fit(train, n_items, grid[0])
    scores = {
        lam: query_mae(base.with_shrinkage(lam).predict(validation.query_items), validation)
        for lam in grid
    }
    return base.with_shrinkage(min(scores, key=scores.__getitem__))


def _batch_loss(
    model: PreferenceEstimator, params: Params, rows: RatingRows, tables: FeatureTables, idx: Tensor
) -> Tensor:
    features = tables.gather(rows.user_rows[idx], rows.item_rows[idx].unsqueeze(1))
    pred = model.predict(params, features).squeeze(1)  # (B,)
    return masked_mse(pred, rows.ratings[idx], torch.ones_like(pred, dtype=torch.bool))


def pooled_predict(
    model: PreferenceEstimator, params: Mapping[str, Tensor], tasks: TaskSet, tables: FeatureTables
) -> Tensor:
    """Query predictions (T, Q) of fixed parameters (no adaptation)."""
    with torch.no_grad():
        features = tables.gather(tasks.user_rows.long(), tasks.query_items.long())
        return model.predict(params, features)


def fit_pooled(
    config: Config,
    space: FeatureSpace,
    train: TaskSet,
    validation: TaskSet,
    tables: FeatureTables,
    options: BaselineConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[PreferenceEstimator, Params, int]:
    """Train the estimator by plain regression on all training ratings (Adam, minibatches).

    Returns the module, the parameters of the epoch with the lowest validation query MAE
    and that epoch (0: the initialisation); stops early after ``pooled_patience`` epochs
    without improvement.
    ``progress(1)`` is called after each epoch.
    """
    torch.manual_seed(options.seed)
    model = PreferenceEstimator(config.model, space)
    params = {k: v.requires_grad_() for k, v in model.init_params(head=False).items()}
    opt = torch.optim.Adam(params.values(), lr=options.pooled_lr)
    rows = training_rows(train)
    gen = torch.Generator().manual_seed(options.seed)
    best = (query_mae(pooled_predict(model, params, validation, tables), validation), 0)
    best_params = {k: v.detach().clone() for k, v in params.items()}
    for epoch in range(1, options.pooled_epochs + 1):
        for idx in torch.randperm(len(rows), generator=gen).split(options.pooled_batch):
            opt.zero_grad()
            _batch_loss(model, params, rows, tables, idx).backward()
            opt.step()
        score = query_mae(pooled_predict(model, params, validation, tables), validation)
        if score < best[0]:
            best = (score, epoch)
            best_params = {k: v.detach().clone() for k, v in params.items()}
        if progress is not None:
            progress(1)
        if epoch - best[1] >= options.pooled_patience:
            break
    return model, best_params, best[1]


def pick_finetune_lr(
    model: PreferenceEstimator,
    params: Params,
    validation: TaskSet,
    tables: FeatureTables,
    *,
    steps: int,
    base_lr: float,
    scales: tuple[float, ...],
) -> float:
    """The inner lr (``base_lr`` × a scale) whose fine-tuning gives the lowest validation MAE."""
    scores = {}
    for scale in scales:
        lr = base_lr * scale
        pred = predict_queries(model, params, validation, tables, steps=steps, lr=lr)
        scores[lr] = query_mae(pred, validation)
    return min(scores, key=scores.__getitem__)
