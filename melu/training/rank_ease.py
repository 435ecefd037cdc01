"""EASE^R inside the ranking head: its λ and support weighting picked on validation users.

The head (``melu.model.ranking``) keeps EASE^R's precision matrix P = (G + λI)⁻¹ over item
ids; ``pick_ease`` tries each λ of ``EASE_LAMBDAS`` with a binary and a rating-weighted
support and keeps the best validation NDCG@10 (the top-N protocol's validation users at
supports of 3, 5 and 10), so the head can start as the best EASE^R the validation users
allow (``train.rank_start="ease"``). ``pick_liked`` does the same for the head's item–item
weights regressed on what users liked (``ranking_stats.liked_weights``), and ``pick_walk``
picks RP³β's (α, β) (``ranking_stats.walk_weights``); ``pick_neighbours`` the user-kNN
part's α and K (``ranking.neighbour_scores``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from melu.evaluation.topn import TopNUsers, rank_users, user_metrics
from melu.model import ranking, ranking_stats


def validation_ndcgs(ranker: Any, users: list[TopNUsers], threshold: float) -> list[Tensor]:
    """Per-user NDCG@10 of each validation setting."""
    return [
        user_metrics(rank_users(ranker, u, 10), u.relevant(threshold), (10,))["ndcg@10"]
        for u in users
    ]


def validation_ndcg(ranker: Any, users: list[TopNUsers], threshold: float) -> float:
    """Mean NDCG@10 over the validation settings (users pooled)."""
    return float(torch.cat(validation_ndcgs(ranker, users, threshold)).mean())


PartScores = Callable[[Mapping[str, Tensor], ranking.Bag, Tensor], Tensor]
SCORES: dict[str, PartScores] = {
    "ease": ranking.ease_scores, "liked": ranking.liked_scores, "walk": ranking.walk_scores,
}  # fmt: skip


class PartRanker:
    """One closed-form item–item part of the head alone (``part``: "ease", from EASE^R's
    precision matrix; "liked", from the liked-target weights; "walk", RP³β's), over item ids, the support
    weighted by ``level_weight`` (per rating level; ones: binary): what picks its λ and
    weighting."""

    def __init__(
        self, part: str, matrix: Tensor, ids: Tensor, level_weight: Tensor, space: Any
    ) -> None:
        self.params = {
            f"rank.{part}": matrix, f"rank.{part}_level": level_weight,
            f"rank.{part}_weight": torch.ones(1),
        }  # fmt: skip
        self.part, self.ids, self.space = part, ids, space

    def scores(self, supports: Any) -> Tensor:
        low, step = self.space.rating_scale[0], self.space.rating_step
        n_levels = len(self.params[f"rank.{self.part}_level"])
        levels = ranking.rating_levels(supports.ratings, low, step, n_levels)
        bag = ranking.Bag(self.ids[supports.items], levels, supports.mask)
        return SCORES[self.part](self.params, bag, self.ids)


EASE_LAMBDAS = (1e3, 3e3, 1e4, 2e4, 5e4, 1e5, 3e5)


@dataclass
class EaseChoice:
    """EASE^R (or the liked-target or walk part) as picked on the validation users: its
    setting (λ; for the walk (α, β)), its matrix, the support's level weights (binary or the
    rating itself, scaled to mean 1), the scale at which its top validation score is 1, and
    the validation NDCG@10 of every (setting, weighting)."""

    setting: float | tuple[float, float]
    matrix: Tensor
    level_weight: Tensor
    scale: float
    grid: dict[str, float]


def _label(setting: float | tuple[float, float]) -> str:
    """A setting as the validation grid names it: "2000" or "0.5,0.2"."""
    return ",".join(f"{v:g}" for v in setting) if isinstance(setting, tuple) else f"{setting:g}"


def _pick(
    solve: Callable[[Any], Tensor], part: str, settings: Sequence[float | tuple[float, float]],
    ids: Tensor, users: list[TopNUsers], threshold: float, space: Any, levels: int,
) -> EaseChoice:  # fmt: skip
    """The setting of ``settings`` and support weighting (binary or rating) whose
    ``PartRanker`` of ``part`` with the matrix ``solve(setting)`` has the best validation
    NDCG@10, and its scale."""
    values = torch.arange(1, levels + 1, dtype=torch.float32)
    weightings = {"binary": torch.ones(levels), "rating": values / values.mean()}
    grid: dict[str, float] = {}
    best: tuple[float, Any, Tensor, Tensor] | None = None
    for setting in settings:
        matrix = solve(setting)
        for name, weight in weightings.items():
            score = validation_ndcg(PartRanker(part, matrix, ids, weight, space), users, threshold)
            grid[f"{_label(setting)}/{name}"] = score
            if best is None or score > best[0]:
                best = (score, setting, matrix, weight)
    assert best is not None
    _, setting, matrix, weight = best
    top = _mean_top(PartRanker(part, matrix, ids, weight, space), users)
    return EaseChoice(setting, matrix, weight, 1.0 / max(top, 1e-9), grid)


def _mean_top(ranker: Any, users: list[TopNUsers]) -> float:
    """The mean top score ``ranker`` gives the middle validation draw's users (what a
    part's scale is set from)."""
    return float(ranker.scores(users[len(users) // 2].supports).max(-1).values.mean())


def pick_ease(
    gram: Tensor, ids: Tensor, users: list[TopNUsers], threshold: float, space: Any, levels: int
) -> EaseChoice:
    """EASE^R's λ (``EASE_LAMBDAS``) and support weighting with the best validation NDCG@10;
    ``matrix`` is its precision matrix."""

    def solve(lam: float) -> Tensor:
        return ranking_stats.ease_precision(gram, lam)

    return _pick(solve, "ease", EASE_LAMBDAS, ids, users, threshold, space, levels)


def pick_liked(
    gram: Tensor, liked_gram: Tensor, ids: Tensor, users: list[TopNUsers], threshold: float,
    space: Any, levels: int,
) -> EaseChoice:  # fmt: skip
    """The liked-target weights' λ (``ranking_stats.LIKED_LAMBDAS``) and support weighting
    with the best validation NDCG@10 alone; ``matrix`` holds the weights B
    (``ranking_stats.liked_weights``)."""

    def solve(lam: float) -> Tensor:
        return ranking_stats.liked_weights(gram, liked_gram, lam)

    lambdas = ranking_stats.LIKED_LAMBDAS
    return _pick(solve, "liked", lambdas, ids, users, threshold, space, levels)


def pick_walk(
    rated: Tensor, ids: Tensor, users: list[TopNUsers], threshold: float, space: Any, levels: int
) -> EaseChoice:
    """RP³β's (α, β) (``ranking_stats.WALK_SETTINGS``) and support weighting with the best
    validation NDCG@10 alone, from the training users' binary ``rated`` (users, V) matrix;
    ``matrix`` holds the weights W (``ranking_stats.walk_weights``)."""

    def solve(setting: tuple[float, float]) -> Tensor:
        return ranking_stats.walk_weights(rated, *setting)

    return _pick(solve, "walk", ranking_stats.WALK_SETTINGS, ids, users, threshold, space, levels)


# the user-kNN part's (α, K) grid, its baseline's too (``TopNBaselineConfig``)
NEIGHBOUR_SETTINGS = tuple(
    itertools.product(ranking_stats.NEIGHBOUR_ALPHAS, ranking_stats.NEIGHBOUR_KEEPS)
)


@dataclass
class NeighbourChoice:
    """The user-kNN part as picked on the validation users: its params (``rank.neighbour_*``
    but the bucket weights; the liked matrix scaled so that weight 1 puts the top validation
    score at 5 logits), its (α, K) and the validation NDCG@10 of every (α, K)."""

    params: dict[str, Tensor]
    setting: tuple[float, int]
    grid: dict[str, float]


class NeighbourRanker:
    """The head's user-kNN part alone over item ids (``ranking.neighbour_scores``)."""

    def __init__(self, params: dict[str, Tensor], ids: Tensor) -> None:
        self.params = {**params, "rank.neighbour_weight": torch.ones(1)}
        self.ids = ids

    def scores(self, supports: Any) -> Tensor:
        levels = torch.zeros_like(supports.items)  # the part ignores rating levels
        bag = ranking.Bag(self.ids[supports.items], levels, supports.mask)
        return ranking.neighbour_scores(self.params, bag, self.ids)


def pick_neighbours(
    rated: Tensor, liked: Tensor, ids: Tensor, users: list[TopNUsers], threshold: float
) -> NeighbourChoice:
    """The (α, K) of ``NEIGHBOUR_SETTINGS`` with the best validation NDCG@10 of the user-kNN
    part alone, from the training users' binary ``rated`` and ``liked`` (users, V) by id."""
    base = {
        "rank.neighbour_rated": rated.T.contiguous(),
        "rank.neighbour_liked": liked.T.contiguous(),
        "rank.neighbour_norm": rated.sum(1).clamp(min=1.0).sqrt(),
    }
    grid: dict[str, float] = {}
    best: tuple[float, dict[str, Tensor], tuple[float, int]] | None = None
    for alpha, keep in NEIGHBOUR_SETTINGS:
        params = {
            **base, "rank.neighbour_alpha": torch.tensor([alpha]),
            "rank.neighbour_keep": torch.tensor([float(keep)]),
        }  # fmt: skip
        score = validation_ndcg(NeighbourRanker(params, ids), users, threshold)
        grid[_label((alpha, float(keep)))] = score
        if best is None or score > best[0]:
            best = (score, params, (alpha, keep))
    assert best is not None
    _, params, setting = best
    top = _mean_top(NeighbourRanker(params, ids), users)
    params["rank.neighbour_liked"] = params["rank.neighbour_liked"] * (5.0 / max(top, 1e-9))
    return NeighbourChoice(params, setting, grid)
