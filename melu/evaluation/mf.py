"""Biased matrix factorisation (ALS) with closed-form fold-in of new users.

Model: ŷ_ui = μ + b_u + b_i + p_u·q_i, fit by alternating ridge regressions on the
training users' ratings (``Prepared.train_ratings``): with items fixed, each user's
(p_u, b_u) minimises Σ_i (r_ui − μ − b_i − p_u·q_i − b_u)² + λ‖p_u‖² + λ_b b_u², and
symmetrically for the items. Every solve is batched: the normal matrices Σ x xᵀ of all
users (or items) come from one sparse (rows × other side) @ (other side, (k+1)²) product.

A user not seen in training (every evaluation user, and warm users too, so every scenario
goes through the same path) is *folded in*: the same ridge problem on their support with
the items fixed, solved in closed form for all tasks at once (``MatrixFactorization.fold_in``).
Items without training ratings (every new item) have q_i = 0 and b_i = 0: they add to the
user's bias only and are predicted μ + b_u. Rank and λ are picked on validation users.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from melu.evaluation.bias import validation_mae
from melu.prepare import RatingRows
from melu.tasks import TaskSet

RANKS = (4, 8, 16)
REGS = (2.0, 5.0, 15.0)


@dataclass(frozen=True)
class MFConfig:
    """ALS settings and the grids the validation users pick from."""

    ranks: tuple[int, ...] = RANKS
    regs: tuple[float, ...] = REGS  # λ on factors (sum of squared errors, not a mean)
    bias_reg: float = 5.0  # λ_b on biases
    iterations: int = 10
    seed: int = 0


def ridge_solve(features: Tensor, targets: Tensor, mask: Tensor, penalty: Tensor) -> Tensor:
    """Batched ridge: argmin_w Σ_s m_s (y_s − x_s·w)² + Σ_d penalty_d w_d².

    features (B, S, D), targets (B, S), mask (B, S) bool, penalty (D,) → w (B, D).
    """
    x = features * mask.unsqueeze(-1)
    gram = x.transpose(1, 2) @ x + torch.diag(penalty)  # (B, D, D)
    rhs = (x * targets.unsqueeze(-1)).sum(1)  # (B, D)
    return torch.linalg.solve(gram, rhs)


def _als_side(
    own: Tensor, other: Tensor, target: Tensor, feats: Tensor, n_own: int, penalty: Tensor
) -> Tensor:
    """One ALS half-step: (n_own, D) ridge solutions with the other side's ``feats`` (M, D)
    fixed; ``own`` / ``other`` (N,) index each rating's two sides, ``target`` (N,)."""
    d = feats.shape[1]
    outer = (feats.unsqueeze(2) * feats.unsqueeze(1)).reshape(len(feats), d * d)  # (M, D²)
    incidence = torch.sparse_coo_tensor(
        torch.stack([own, other]),
        torch.ones_like(target),
        (n_own, len(feats)),
        check_invariants=False,
    )
    gram = torch.sparse.mm(incidence, outer).reshape(n_own, d, d) + torch.diag(penalty)
    rhs = torch.zeros(n_own, d, dtype=feats.dtype).index_add_(
        0, own, target.unsqueeze(1) * feats[other]
    )
    return torch.linalg.solve(gram, rhs)


@dataclass(frozen=True)
class MatrixFactorization:
    """μ, item factors (I, k), item biases (I,), the ridge λ / λ_b of the fold-in and
    the rating scale used to clip predictions."""

    mu: float
    item_factors: Tensor
    item_bias: Tensor
    reg: float
    bias_reg: float
    scale: tuple[float, float]

    @property
    def rank(self) -> int:
        return int(self.item_factors.shape[1])

    def penalty(self) -> Tensor:
        """(k + 1,) ridge weights: λ on the factor, λ_b on the bias (last column)."""
        values = [self.reg] * self.rank + [self.bias_reg]
        return torch.tensor(values, dtype=torch.float64)

    def fold_in(self, items: Tensor, ratings: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Each user's (p_u (T, k), b_u (T,)) from their ratings: items (T, S) item rows,
        ratings (T, S), mask (T, S) — the ridge problem of training with items fixed."""
        items = items.long()
        ones = torch.ones(*items.shape, 1, dtype=torch.float64)
        feats = torch.cat([self.item_factors[items], ones], dim=-1)  # (T, S, k+1)
        target = ratings.double() - self.mu - self.item_bias[items]
        w = ridge_solve(feats, target, mask.bool(), self.penalty())
        return w[:, :-1], w[:, -1]

    def predict(self, tasks: TaskSet) -> Tensor:
        """Query predictions (T, Q) float32 after folding in each task's support."""
        factors, bias = self.fold_in(tasks.support_items, tasks.support_ratings, tasks.support_mask)
        q = tasks.query_items.long()
        inter = (self.item_factors[q] * factors.unsqueeze(1)).sum(-1)  # (T, Q)
        pred = self.mu + bias.unsqueeze(1) + self.item_bias[q] + inter
        return pred.clamp(*self.scale).float()


def fit_als(
    rows: RatingRows,
    n_users: int,
    n_items: int,
    scale: tuple[float, float],
    *,
    rank: int,
    reg: float,
    config: MFConfig,
) -> MatrixFactorization:
    """Biased MF by ``config.iterations`` ALS sweeps (users then items) in float64."""
    gen = torch.Generator().manual_seed(config.seed)
    users, items = rows.user_rows.long(), rows.item_rows.long()
    ratings = rows.ratings.double()
    mu = float(ratings.mean())
    penalty = torch.tensor([reg] * rank + [config.bias_reg], dtype=torch.float64)
    item_w = torch.cat(
        [0.1 * torch.randn(n_items, rank, generator=gen, dtype=torch.float64),
         torch.zeros(n_items, 1, dtype=torch.float64)], dim=1,
    )  # fmt: skip
    ones_i = torch.ones(n_items, 1, dtype=torch.float64)
    ones_u = torch.ones(n_users, 1, dtype=torch.float64)
    for _ in range(config.iterations):
        feats = torch.cat([item_w[:, :-1], ones_i], dim=1)  # (I, k+1): q_i, 1
        target = ratings - mu - item_w[items, -1]
        user_w = _als_side(users, items, target, feats, n_users, penalty)
        feats = torch.cat([user_w[:, :-1], ones_u], dim=1)  # (U, k+1): p_u, 1
        target = ratings - mu - user_w[users, -1]
        item_w = _als_side(items, users, target, feats, n_items, penalty)
    return MatrixFactorization(mu, item_w[:, :-1], item_w[:, -1], reg, config.bias_reg, scale)


def fit_mf(
    rows: RatingRows,
    validation: TaskSet,
    n_users: int,
    n_items: int,
    scale: tuple[float, float],
    config: MFConfig | None = None,
) -> MatrixFactorization:
    """ALS for every (rank, λ) of the grids; the one whose fold-in gives the lowest
    validation query MAE."""
    config = config or MFConfig()
    best: tuple[float, MatrixFactorization] | None = None
    for rank, reg in itertools.product(config.ranks, config.regs):
        model = fit_als(rows, n_users, n_items, scale, rank=rank, reg=reg, config=config)
        score = validation_mae(model.predict(validation), validation)
        if best is None or score < best[0]:
            best = (score, model)
    assert best is not None, "empty MF grid"
    return best[1]
