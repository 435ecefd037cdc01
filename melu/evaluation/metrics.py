"""Rating and ranking metrics on padded per-user query sets — pure functions.

All inputs are (T, Q): T users (tasks), Q query slots, ``mask`` true on real rows. Per-user
figures are (T,) tensors; a user with no real query row gets NaN and is skipped by the
averages. The *headline* figure is the per-user average MAE (every user counts equally,
which is the cold-start question "how wrong are we for a new person?"); the figures over
all ratings (``*_all``) weight heavy raters more and are reported beside it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

NDCG_KS = (1, 3, 5, 10)


def _count(mask: Tensor) -> Tensor:
    return mask.sum(-1).to(torch.float64)


def user_mae(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE_u = (1 / n_u) Σ_{i ∈ Q_u} |ŷ_ui − y_ui|, per user: (T,), NaN if n_u = 0."""
    err = ((pred.double() - target.double()).abs() * mask).sum(-1)
    return err / _count(mask).where(mask.any(-1), torch.tensor(math.nan, dtype=torch.float64))


def user_rmse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """RMSE_u = sqrt((1 / n_u) Σ_{i ∈ Q_u} (ŷ_ui − y_ui)²), per user: (T,), NaN if n_u = 0."""
    sq = ((pred.double() - target.double()) ** 2 * mask).sum(-1)
    n = _count(mask).where(mask.any(-1), torch.tensor(math.nan, dtype=torch.float64))
    return (sq / n).sqrt()


def error_sums(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(3,) float64 on the CPU: Σ|ŷ − y|, Σ(ŷ − y)² over the real rows, and their count.

    The pooled figures below are ratios of these sums, so shards (chunks, ranks) add up.
    """
    err = (pred.double() - target.double())[mask.bool()]
    return torch.stack([err.abs().sum(), (err**2).sum(), torch.tensor(float(err.numel()))]).cpu()


def mae_all(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """MAE over all ratings: Σ_u Σ_i |ŷ_ui − y_ui| / Σ_u n_u."""
    sums = error_sums(pred, target, mask)
    return float(sums[0] / sums[2])


def rmse_all(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """RMSE over all ratings: sqrt(Σ_u Σ_i (ŷ_ui − y_ui)² / Σ_u n_u)."""
    sums = error_sums(pred, target, mask)
    return math.sqrt(float(sums[1] / sums[2]))


def _tie_averaged_gains(pred: Tensor, gain: Tensor, mask: Tensor) -> Tensor:
    """Gains in ranked order (T, Q), each tie group of equal scores given its mean gain.

    Padding rows sort last (and have gain 0). Giving each position of a tie group the
    group's mean gain is the expected DCG over a uniformly random order within ties
    (McSherry & Najork, 2008), so a constant predictor gets the average, not the best or
    worst, ordering.
    """
    score = pred.double().masked_fill(~mask, -math.inf)
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    s = torch.gather(score, -1, order)
    m = torch.gather(mask, -1, order)
    g = torch.gather(gain, -1, order) * m
    new_group = torch.ones_like(m)
    new_group[:, 1:] = (s[:, 1:] != s[:, :-1]) | (m[:, 1:] != m[:, :-1])
    group = new_group.long().cumsum(-1) - 1  # (T, Q) group id per position
    total = torch.zeros_like(g).scatter_add_(-1, group, g)
    size = torch.zeros_like(g).scatter_add_(-1, group, torch.ones_like(g))
    return torch.gather(total / size.clamp(min=1), -1, group)


def user_ndcg(pred: Tensor, target: Tensor, mask: Tensor, k: int) -> Tensor:
    """nDCG@k of each user's query items ranked by predicted score: (T,), NaN if n_u = 0.

    DCG@k = Σ_{r=1}^{min(k, n_u)} (2^{rel_r} − 1) / log2(r + 1), where rel_r is the true
    rating of the item ranked r-th by ``pred`` (ratings are the graded relevance), and
    nDCG@k = DCG@k / IDCG@k with IDCG@k the DCG@k of the items sorted by true rating.
    Ties in ``pred`` are averaged (see ``_tie_averaged_gains``).
    """
    gain = (2.0 ** target.double() - 1.0) * mask
    width = pred.shape[-1]
    discount = 1.0 / torch.log2(torch.arange(width, dtype=torch.float64) + 2.0)
    discount = discount * (torch.arange(width) < k)
    dcg = (_tie_averaged_gains(pred, gain, mask) * discount).sum(-1)
    ideal = torch.sort(gain, dim=-1, descending=True).values
    idcg = (ideal * discount).sum(-1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.nan).where(
        mask.any(-1), torch.tensor(math.nan, dtype=torch.float64)
    )


def bootstrap_indices(n_users: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_users) user indices drawn with replacement (seeded). Reusing one draw
    for every method of a scenario makes their intervals and differences paired."""
    return np.random.default_rng(seed).integers(0, n_users, size=(n_boot, n_users))


def bootstrap_ci(
    values: Tensor | np.ndarray, index: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (T,).

    ``index`` comes from ``bootstrap_indices``; the interval is the (1 ± level)/2
    quantiles of the resampled means (NaN users are ignored in each mean).
    """
    v = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():  # a resample of only NaN users has no mean: skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(v[index], axis=1)
        lo, hi = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def nanmean(values: Tensor) -> float:
    return float(torch.nanmean(values.double()))


def per_user(
    pred: Tensor, target: Tensor, mask: Tensor, ks: Sequence[int] = NDCG_KS
) -> dict[str, Tensor]:
    """All per-user figures: ``mae``, ``rmse``, ``ndcg@k`` → (T,) tensors."""
    mask = mask.bool()
    out = {"mae": user_mae(pred, target, mask), "rmse": user_rmse(pred, target, mask)}
    for k in ks:
        out[f"ndcg@{k}"] = user_ndcg(pred, target, mask, k)
    return out


def summarize(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    index: np.ndarray,
    ks: Sequence[int] = NDCG_KS,
) -> dict[str, float | list[float]]:
    """User-averaged figures with bootstrap CIs (``<name>_ci``) plus ``mae_all``/``rmse_all``."""
    mask = mask.bool()
    out: dict[str, float | list[float]] = {}
    for name, values in per_user(pred, target, mask, ks).items():
        out[name] = nanmean(values)
        out[f"{name}_ci"] = list(bootstrap_ci(values, index))
    out["mae_all"] = mae_all(pred, target, mask)
    out["rmse_all"] = rmse_all(pred, target, mask)
    return out
