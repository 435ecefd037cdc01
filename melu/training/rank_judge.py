"""Judging the ranking head's candidate mixes on validation draws, fast.

``melu.training.rank_mix`` searches the part weights; this module gives it what it judges
with: each draw's part scores computed once (``part_scores``: everything but the mixed
parts, then each mixed part at weight 1), so a candidate mix costs a weighted sum and a
top-10 (``Setting``), NDCG@10 and Recall@10 computed for several mixes at once, and the
means over the draws (``Pooled``). The metrics are ``topn.user_metrics``' (a test pins
them equal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from melu.evaluation.topn import TopNUsers, discounts, without_support
from melu.evaluation.topn_model import ModelRanker
from melu.model import personal

# the head's mixed parts: each one's weight per support-size bucket is what the pick chooses
PARTS = (
    "rank.pop_weight", "rank.rating_weight", "rank.cooc_weight", "rank.learned_weight",
    "rank.ease_weight", "rank.liked_weight", "rank.walk_weight", "rank.neighbour_weight",
)  # fmt: skip


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


Judged = tuple[Tensor, Tensor, Tensor | None]  # per user: NDCG@10, Recall@10, shared share
# ranks 1..10 and the ideal DCG by hits, as ``topn.user_metrics`` discounts them
DISCOUNT, CUM_DISCOUNT = discounts(personal.SHOWN)


@dataclass
class Setting:
    """One validation draw of a bucket: its parts (1 + P, U, I) with the support and other
    non-candidates at −inf in the first, relevant items (U, I), and the users' no-ratings
    lists (U, 10) when the search limits what may be shared with them, and ``keep`` (U,)
    when a list may hold at most that many of them (``personal.limit_shared``)."""

    parts: Tensor
    relevant: Tensor
    empty: Tensor | None = None
    keep: Tensor | None = None

    def __post_init__(self) -> None:
        # per user (U,): how many relevant items, and the ideal DCG@10 they allow
        self.n_relevant = self.relevant.sum(1).double()
        self.ideal = CUM_DISCOUNT[self.n_relevant.clamp(max=10).long()]
        self.rows = torch.arange(len(self.relevant)).unsqueeze(1)  # (U, 1)

    @classmethod
    def of(cls, ranker: ModelRanker, params: Mapping[str, Tensor], users: TopNUsers,
           threshold: float) -> Setting:  # fmt: skip
        parts, allowed = part_scores(ranker, params, users)
        parts[0].masked_fill_(~allowed, -torch.inf)
        return cls(parts, users.relevant(threshold))

    def subset(self, rows: Tensor) -> Setting:
        """The draw restricted to the users ``rows`` (R,) (indices; a repeated row counts
        as many times: a bootstrap resample), the parts shared, not copied, where possible."""
        empty = None if self.empty is None else self.empty[rows]
        keep = None if self.keep is None else self.keep[rows]
        return Setting(self.parts[:, rows], self.relevant[rows], empty, keep)

    def scores(self, weights: Mapping[str, float]) -> Tensor:
        """(U, I) the scores under the mix ``weights`` (one per name of PARTS)."""
        out = self.parts[0].clone()
        for p, name in enumerate(PARTS):
            out.add_(self.parts[1 + p], alpha=weights[name])
        return out

    def judge(self, scores: Tensor) -> Judged:
        """Per user (..., U): NDCG@10 and Recall@10 (``topn.user_metrics``) of the top 10
        by ``scores`` (..., U, I) — several mixes' scores at once along the leading
        dimensions — and the share of it also in the no-ratings list (None without one)."""
        if self.keep is not None and self.empty is not None:
            scores = personal.limit_shared(scores, self.empty.clamp(min=0), self.keep)
        top = scores.topk(10, dim=-1).indices  # (..., U, 10)
        hits = self.relevant[self.rows, top].double()
        ndcg = (hits * DISCOUNT).sum(-1) / self.ideal
        recall = hits.sum(-1) / self.n_relevant
        shared = None
        if self.empty is not None:
            shared = (top.unsqueeze(-1) == self.empty.unsqueeze(-2)).any(-1).double().mean(-1)
        return ndcg, recall, shared


@dataclass(frozen=True)
class Pooled:
    """Means over the draws' users."""

    ndcg: float
    recall: float
    shared: float

    @classmethod
    def of(cls, judged: Sequence[Judged]) -> Pooled:
        return cls.each(judged)[0]

    @classmethod
    def each(cls, judged: Sequence[Judged]) -> list[Pooled]:
        """One per mix of judged (..., U) per draw: the leading dimensions flattened."""

        def pooled(which: int) -> list[float]:
            values = [v for j in judged if (v := j[which]) is not None]
            if not values:  # no share without no-ratings lists
                return [0.0] * judged[0][0].shape[:-1].numel()
            flat = torch.cat([v.reshape(-1, v.shape[-1]) for v in values], dim=1)  # (M, ΣU)
            return [float(x) for x in flat.nanmean(1)]

        return [cls(*row) for row in zip(pooled(0), pooled(1), pooled(2), strict=True)]


__all__ = ["CUM_DISCOUNT", "DISCOUNT", "PARTS", "Judged", "Pooled", "Setting", "part_scores"]
