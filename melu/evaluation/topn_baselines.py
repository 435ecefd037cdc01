"""Top-N baselines (stand-in until the real module lands: popularity only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from melu.evaluation.topn import Ranker, Supports, TopNProtocol, training_popularity
from melu.prepare import Prepared


class Popularity:
    """Every user gets the catalog ordered by training rating count."""

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts

    def scores(self, supports: Supports) -> Tensor:
        return self.counts.unsqueeze(0).expand(len(supports), -1)


def fit_topn_baselines(
    prepared: Prepared, protocol: TopNProtocol, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Ranker], dict[str, Any]]:
    counts = training_popularity(prepared.train_ratings, len(prepared.tables.item_ids))
    return {"popularity": Popularity(counts)}, {}
