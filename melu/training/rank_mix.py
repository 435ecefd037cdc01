"""The ranking head's mixing weights, picked on validation users for each support size.

The head (``melu.model.ranking``) adds four parts, each at a weight per support-size bucket
(``ranking.SUPPORT_BUCKETS``): popularity π, the adapted predicted rating γ (the
meta-learned rating part after the one ``adapt()``), co-occurrence c, the parts trained by
likelihood λ_L (item bias, factors, the learned item–item matrix) and EASE^R c_e.
Training them by the likelihood of training users' held-out items moves them away from what
ranks *new* users well (RESULTS.md, "What was tried for the head"), so ``pick_mixing``
chooses them the way EASE^R's λ is chosen: NDCG@10 of the validation users, here at the one
validation support size that falls in each bucket, by coordinate ascent over a grid (EASE^R's
weight fixed as the scale). Test users are never looked at.

Each part's scores are computed once per validation setting (the adapted rating included),
so a candidate mix costs a weighted sum and a top-10, not a new adaptation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from melu.evaluation.topn import TopNUsers, user_metrics, without_support
from melu.evaluation.topn_model import ModelRanker

PARTS = (
    "rank.pop_weight", "rank.rating_weight", "rank.cooc_weight", "rank.learned_weight",
    "rank.ease_weight",
)  # fmt: skip
SEARCHED = PARTS[:4]  # EASE^R's weight stays: it sets the scale the others are relative to
GRID: dict[str, tuple[float, ...]] = {
    "rank.pop_weight": (0.0, 1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "rank.rating_weight": (-0.3, -0.03, 0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "rank.cooc_weight": (0.0, 0.1, 0.3, 1.0, 3.0),
    "rank.learned_weight": (0.0, 0.3, 1.0, 2.0),  # the trained parts (0 before training)
}
SWEEPS = 2


@dataclass
class MixChoice:
    """The weights picked (name → (B,) per bucket) and each bucket's validation NDCG@10
    before (the start) and after."""

    weights: dict[str, Tensor]
    before: list[float]
    after: list[float]


def part_scores(
    ranker: ModelRanker, params: Mapping[str, Tensor], users: TopNUsers
) -> tuple[Tensor, Tensor]:
    """(1 + P, U, I): for ``users``, the scores of everything but the mixed parts, then each
    mixed part's at weight 1; and (U, I) bool: the candidates they may be shown (the
    scenario's items minus their support)."""

    def scores(weights: Mapping[str, Tensor]) -> Tensor:
        ranker.params = {**ranker.params, **weights}
        with torch.no_grad():
            return ranker.scores(users.supports).float().cpu()

    off = {k: torch.zeros_like(params[k]) for k in PARTS}
    rest = scores(off)
    parts = [rest] + [scores({**off, k: torch.ones_like(params[k])}) - rest for k in PARTS]
    s = users.supports
    return torch.stack(parts), without_support(users.candidates, s.items, s.mask)


def mix_ndcg(parts: Tensor, allowed: Tensor, relevant: Tensor, weights: Sequence[float]) -> float:
    """Mean NDCG@10 of ranking by parts[0] + Σ_p w_p · parts[1 + p] (1 + P, U, I) among
    ``allowed`` (U, I)."""
    w = torch.tensor([1.0, *weights], dtype=parts.dtype).view(-1, 1, 1)
    scores = (w * parts).sum(0).masked_fill(~allowed, -torch.inf)
    top = scores.topk(10, dim=1).indices
    return float(user_metrics(top, relevant, (10,))["ndcg@10"].nanmean())


def pick_mixing(
    ranker: ModelRanker,
    params: Mapping[str, Tensor],
    users: Sequence[TopNUsers],
    threshold: float,
) -> MixChoice:
    """Coordinate ascent over ``GRID`` of each bucket's π, γ, c on the validation setting
    ``users[b]`` (one per bucket of ``ranking.SUPPORT_BUCKETS``, in order), starting from
    ``params``' weights; a change is kept only if it raises that bucket's NDCG@10."""
    weights = {k: params[k].detach().float().cpu().clone() for k in PARTS}
    saved = dict(ranker.params)
    before, after = [], []
    for b, setting in enumerate(users):
        parts, allowed = part_scores(ranker, params, setting)
        relevant = setting.relevant(threshold)
        current = {k: float(weights[k][b]) for k in PARTS}
        best = mix_ndcg(parts, allowed, relevant, [current[k] for k in PARTS])
        before.append(best)
        for _ in range(SWEEPS):
            for name in SEARCHED:
                for value in GRID[name]:
                    trial = {**current, name: value}
                    score = mix_ndcg(parts, allowed, relevant, [trial[k] for k in PARTS])
                    if score > best + 1e-6:
                        best, current = score, trial
        after.append(best)
        for k in PARTS:
            weights[k][b] = current[k]
    ranker.params = saved
    return MixChoice(weights, before, after)


__all__ = ["GRID", "MixChoice", "pick_mixing"]
