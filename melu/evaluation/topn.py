"""Full-catalog top-N for a new user: the protocol, the rankers' interface and the metrics.

What a person sees is the top of a ranking of the whole catalog after they rated a few
movies, so this is what is scored (Liang et al. 2018 and Steck 2019's "held-out users, fold
in part of their history" protocol, applied to cold-start users):

- users: the test users (``user_cold``: their ratings of existing items; ``user_item_cold``:
  their ratings of new items), or the validation users for choosing settings;
- support: a seeded random ``n`` of the user's ratings in the scenario's items (nested: the
  support of 3 holds the support of 1), ``n = 0`` being the no-ratings list;
- held out: every other rating of the user in the scenario's items; *relevant* = held-out
  rating ≥ ``threshold`` (4 on a 1–5 scale);
- candidates: the scenario's items minus the support (``user_cold``: the whole catalog;
  ``user_item_cold``: the new items), or only the items seen in training (``seen``);
- eligible: users with at least ``max(min_ratings, n + min_heldout)`` ratings in the
  scenario's items and at least one relevant held-out item among the candidates.

A *ranker* maps a batch of supports to scores of every catalog item (higher = ranked
first); ``rank_users`` masks non-candidates, takes the top ``k`` and ``user_metrics`` turns
the lists into per-user Recall@k, NDCG@k (binary gain) and Precision@k.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from melu.prepare import Prepared, RatingRows
from melu.tasks import scatter_padded

TopNScenario = Literal["user_cold", "user_item_cold", "validation"]
Candidates = Literal["all", "seen"]
ROLE = {"user_cold": "test", "user_item_cold": "test", "validation": "validation"}


@dataclass(frozen=True)
class TopNProtocol:
    """The settings of the top-N protocol (every one a field; defaults as DESIGN.md)."""

    supports: tuple[int, ...] = (1, 3, 5, 10, 20)
    ks: tuple[int, ...] = (10, 20)
    threshold: float = 4.0  # relevant = held-out rating >= this (1–5 scale)
    min_ratings: int = 20  # fewest ratings in the scenario's items for a user to take part
    min_heldout: int = 5  # fewest held-out ratings beyond the support
    seed: int = 0  # seed of the support draw


@dataclass(frozen=True)
class Supports:
    """A batch of users and what they told us (C users, n support slots).

    ``user_rows`` (C,) rows into ``FeatureTables.users``; ``items`` (C, n) long rows into
    ``FeatureTables.items`` (= catalog rows); ``ratings`` (C, n) float; ``mask`` (C, n) bool
    (every slot is real in the protocol's batches; n may be 0: the no-ratings list).
    """

    user_rows: Tensor
    items: Tensor
    ratings: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return int(self.user_rows.shape[0])

    def select(self, index: slice | Tensor) -> Supports:
        return Supports(
            self.user_rows[index], self.items[index], self.ratings[index], self.mask[index]
        )


class Ranker(Protocol):
    """Anything that ranks the catalog for a batch of supports (a model or a baseline)."""

    def scores(self, supports: Supports) -> Tensor:
        """(C, I) float scores of every catalog item for each of the C users."""
        ...


@dataclass(frozen=True)
class TopNUsers:
    """The users of one top-N setting (scenario, support size ``n``), U users.

    ``supports``: their supports (U, n); ``heldout_items`` (U, H) long catalog rows,
    ``heldout_ratings`` (U, H), ``heldout_mask`` (U, H) (padding false); ``candidates`` (I,)
    bool: the scenario's items (the support is removed per user when ranking);
    ``user_ids`` (U,) the data set's ids (for pairing and pooling over folds).
    """

    scenario: str
    n: int
    supports: Supports
    heldout_items: Tensor
    heldout_ratings: Tensor
    heldout_mask: Tensor
    candidates: Tensor
    user_ids: Tensor

    def __len__(self) -> int:
        return len(self.supports)

    def relevant(self, threshold: float, index: slice | None = None) -> Tensor:
        """(C, I) bool: held-out items rated ≥ ``threshold``, among the candidates."""
        index = index if index is not None else slice(None)
        items, ratings = self.heldout_items[index], self.heldout_ratings[index]
        keep = self.heldout_mask[index] & (ratings >= threshold)
        out = torch.zeros(len(items), len(self.candidates), dtype=torch.bool)
        rows = torch.arange(len(items)).unsqueeze(1).expand_as(items)
        out[rows[keep], items[keep]] = True
        return out & self.candidates


def scenario_items(prepared: Prepared, scenario: str, candidates: Candidates = "all") -> Tensor:
    """(I,) bool: the catalog items a scenario ranks (and draws supports from)."""
    catalog = prepared.catalog
    is_new = torch.from_numpy(catalog["is_new"].to_numpy(dtype=bool, copy=True))
    items = is_new if scenario == "user_item_cold" else torch.ones_like(is_new)
    if candidates == "seen":
        items = items & torch.as_tensor(catalog["n_ratings"].to_numpy() > 0)
    return items


def topn_users(
    prepared: Prepared,
    scenario: TopNScenario,
    n: int,
    protocol: TopNProtocol = TopNProtocol(),
    candidates: Candidates = "all",
) -> TopNUsers:
    """The eligible users of ``scenario`` with a seeded support of ``n`` ratings.

    Vectorised: one lexsort of the role's ratings by (user, seeded key), no loop over users.
    The key of a rating depends on the seed and the (user, item) pair only, so supports are
    nested across ``n`` and identical whichever other users are in the set.
    """
    rows = prepared.user_ratings[ROLE[scenario]]
    items = scenario_items(prepared, scenario, candidates)
    keep = items[rows.item_rows.long()]
    users = rows.user_rows.long()[keep].numpy()
    item_rows, ratings = rows.item_rows.long()[keep].numpy(), rows.ratings[keep].numpy()
    key = _pair_keys(prepared.tables.user_ids.numpy()[users], item_rows, protocol.seed)
    order = np.lexsort((key, users))
    users, item_rows, ratings = users[order], item_rows[order], ratings[order]
    unique, start, count = np.unique(users, return_index=True, return_counts=True)
    pos = np.arange(len(users)) - np.repeat(start, count)
    relevant_held = (pos >= n) & (ratings >= protocol.threshold)
    has_relevant = np.add.reduceat(relevant_held, start) > 0 if len(start) else start > 0
    eligible = (count >= max(protocol.min_ratings, n + protocol.min_heldout)) & has_relevant
    task = np.repeat(np.cumsum(eligible) - 1, count)
    kept = np.repeat(eligible, count)
    n_users = int(eligible.sum())
    support = scatter_padded(task, pos, kept & (pos < n), item_rows, ratings, n_users, n, np.int64)
    width = int((count[eligible] - n).max()) if n_users else 0
    held = scatter_padded(
        task, pos - n, kept & (pos >= n), item_rows, ratings, n_users, width, np.int64
    )
    user_rows = torch.from_numpy(unique[eligible])
    return TopNUsers(
        scenario, n, Supports(user_rows, *support), *held, items,
        prepared.tables.user_ids[user_rows].long(),
    )  # fmt: skip


def _pair_keys(user_ids: np.ndarray, item_rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random float in [0, 1) per (user id, item row) pair (a hash)."""
    x = (user_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
        item_rows.astype(np.uint64) + np.uint64(seed * 0xBF58476D1CE4E5B9 % 2**64)
    )
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def without_support(candidates: Tensor, items: Tensor, mask: Tensor) -> Tensor:
    """(C, I) bool: the ``candidates`` (I,) each of C users may be shown, minus the catalog
    rows ``items`` (C, n) of their support (``mask`` (C, n) false on padding)."""
    allowed = candidates.unsqueeze(0).expand(len(items), -1).clone()
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(items)
    allowed[rows[mask], items[mask]] = False
    return allowed


def rank_users(ranker: Ranker, users: TopNUsers, k: int, chunk: int = 256) -> Tensor:
    """(U, k) long: each user's top-``k`` catalog rows among the candidates minus the
    support (ties broken by catalog order; fewer candidates than ``k`` never happens in the
    protocol's settings). Scores for a chunk of users × all items at once."""
    out = []
    with torch.no_grad():
        for part in chunks(len(users), chunk):
            s = users.supports.select(part)
            scores = ranker.scores(s).float().cpu()  # (C, I)
            allowed = without_support(users.candidates, s.items, s.mask)
            scores = torch.where(allowed, scores.nan_to_num(nan=-torch.inf), -torch.inf)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            out.append(order[:, :k])
    if not out:
        return torch.zeros(0, k, dtype=torch.long)
    return torch.cat(out)


def discounts(k: int) -> tuple[Tensor, Tensor]:
    """NDCG's discounts of ranks 1..k, 1 / log₂(r + 1) (k,) float64, and the ideal DCG of
    0..k hits, their cumulative sums from 0 (k + 1,)."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    return discount, torch.cat([discount.new_zeros(1), discount.cumsum(0)])


def user_metrics(top: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metrics (U,) of top lists ``top`` (U, K ≥ max ks) against ``relevant`` (U, I).

    recall@k = hits@k / |relevant|; precision@k = hits@k / k; ndcg@k (binary gain) =
    Σ_{r ≤ k, hit} 1 / log₂(r + 1) over its ideal, Σ_{r ≤ min(k, |relevant|)} 1 / log₂(r + 1).
    Users without a relevant item get NaN (the protocol never has them).
    """
    hits = torch.gather(relevant, 1, top).double()  # (U, K)
    n_rel = relevant.sum(1).double()  # (U,)
    discount, cum_discount = discounts(top.shape[1])
    out: dict[str, Tensor] = {}
    for k in ks:
        h = hits[:, :k]
        found = h.sum(1)
        ideal = cum_discount[n_rel.clamp(max=k).long()]
        out[f"recall@{k}"] = found / n_rel
        out[f"precision@{k}"] = found / k
        out[f"ndcg@{k}"] = (h * discount[:k]).sum(1) / ideal
    return out


def list_stats(
    top: Tensor, baseline_top: Tensor | None, popularity: Tensor, n_candidates: int
) -> dict[str, float]:
    """What the lists look like together (``top`` (U, k)).

    coverage: distinct items in all lists / ``n_candidates``; popularity: mean training
    rating count (``popularity`` (I,)) of what is recommended; overlap_no_ratings: mean share
    of a user's list also in their no-ratings list ``baseline_top`` (U, k); overlap_pairwise:
    mean share of one user's list in another's, over all pairs of distinct users
    (Σ_i c_i (c_i − 1) / (k U (U − 1)), c_i = how many lists hold item i).
    """
    users, k = top.shape
    counts = torch.bincount(top.flatten(), minlength=len(popularity)).double()
    pairs = float((counts * (counts - 1)).sum()) / (k * users * (users - 1)) if users > 1 else 0.0
    out = {
        "coverage": float((counts > 0).sum()) / max(n_candidates, 1),
        "popularity": float(popularity.double()[top].mean()) if users else 0.0,
        "overlap_pairwise": pairs,
    }
    if baseline_top is not None:
        same = (top.unsqueeze(2) == baseline_top.unsqueeze(1)).any(2).double()
        out["overlap_no_ratings"] = float(same.mean()) if users else 0.0
    return out


def training_popularity(rows: RatingRows, n_items: int) -> Tensor:
    """(I,) float: each catalog item's number of training ratings."""
    return torch.bincount(rows.item_rows.long(), minlength=n_items).double()
