"""The baseline predictor μ + b_i + b_u (Koren, "Factor in the neighbors", 2010, §2.1).

Fit on the training users' ratings only (``Prepared.train_ratings``):

- μ: the mean training rating;
- b_i = Σ_{u ∈ R(i)} (r_ui − μ) / (n_i + λ_i): the item's mean residual shrunk towards 0;
  an item without training ratings (every new item) gets b_i = 0;
- b_u = Σ_{i ∈ S(u)} (r_ui − μ − b_i) / (n_u + λ_u): the user's mean residual over the
  *support* S(u) (what the user told us), shrunk towards 0 — computed per task at
  prediction time, so a cold user needs no refit.

ŷ_ui = clip(μ + b_i + b_u) to the rating scale. λ_i and λ_u are picked together on the
validation users' query MAE from small grids.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from melu.evaluation.metrics import mae_all
from melu.prepare import RatingRows
from melu.tasks import TaskSet

ITEM_SHRINKAGE = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
USER_SHRINKAGE = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)


def validation_mae(pred: Tensor, tasks: TaskSet) -> float:
    """MAE over all real query rows of ``tasks`` (pred (T, Q)): what the grids minimise."""
    return mae_all(pred, tasks.query_ratings, tasks.query_mask.bool())


@dataclass(frozen=True)
class BiasPredictor:
    """μ, per-item residual sums ``item_sums`` (I,) and counts ``item_counts`` (I,),
    the shrinkages λ_i, λ_u and the rating scale used to clip predictions."""

    mu: float
    item_sums: Tensor
    item_counts: Tensor
    item_shrinkage: float
    user_shrinkage: float
    scale: tuple[float, float]

    @classmethod
    def fit(
        cls,
        rows: RatingRows,
        n_items: int,
        scale: tuple[float, float],
        item_shrinkage: float = 10.0,
        user_shrinkage: float = 5.0,
    ) -> BiasPredictor:
        """Sufficient statistics from training ratings (N rows) over ``n_items`` item rows."""
        ratings = rows.ratings.double()
        mu = float(ratings.mean())
        items = rows.item_rows.long()
        sums = torch.zeros(n_items, dtype=torch.float64).index_add_(0, items, ratings - mu)
        counts = torch.bincount(items, minlength=n_items).double()
        return cls(mu, sums, counts, item_shrinkage, user_shrinkage, scale)

    def with_shrinkage(self, item: float, user: float) -> BiasPredictor:
        return replace(self, item_shrinkage=item, user_shrinkage=user)

    def item_bias(self) -> Tensor:
        """b_i (I,) float64; 0 for items without training ratings."""
        denom = self.item_counts + self.item_shrinkage
        return torch.where(denom > 0, self.item_sums / denom.clamp(min=1e-12), 0.0)

    def user_bias(self, tasks: TaskSet, item_bias: Tensor | None = None) -> Tensor:
        """b_u (T,) float64 from each task's support: Σ(r − μ − b_i) / (n_u + λ_u)."""
        b_i = self.item_bias() if item_bias is None else item_bias
        mask = tasks.support_mask.bool()
        resid = tasks.support_ratings.double() - self.mu - b_i[tasks.support_items.long()]
        total = (resid * mask).sum(1)  # (T,)
        denom = mask.sum(1).double() + self.user_shrinkage
        return torch.where(denom > 0, total / denom.clamp(min=1e-12), 0.0)

    def predict(self, tasks: TaskSet) -> Tensor:
        """Query predictions (T, Q) float32, clipped to the rating scale."""
        b_i = self.item_bias()
        b_u = self.user_bias(tasks, b_i)
        pred = self.mu + b_i[tasks.query_items.long()] + b_u.unsqueeze(1)
        return pred.clamp(*self.scale).float()


def fit_bias_predictor(
    rows: RatingRows,
    validation: TaskSet,
    n_items: int,
    scale: tuple[float, float],
    item_grid: tuple[float, ...] = ITEM_SHRINKAGE,
    user_grid: tuple[float, ...] = USER_SHRINKAGE,
) -> BiasPredictor:
    """The baseline predictor with (λ_i, λ_u) minimising the validation users' query MAE."""
    base = BiasPredictor.fit(rows, n_items, scale)
    scores = {
        (li, lu): validation_mae(base.with_shrinkage(li, lu).predict(validation), validation)
        for li, lu in itertools.product(item_grid, user_grid)
    }
    item, user = min(scores, key=scores.__getitem__)
    return base.with_shrinkage(item, user)
