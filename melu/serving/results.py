"""A person's answer: the top candidates by ranking score, as items with their reasons.

After ``Recommender`` has adapted to a person and scored the candidates (``Scores``), these
pick the top ``k`` (rated items left out when asked, ties by catalog order) and describe
each row as a ``Scored`` item: catalog fields, the predicted rating clamped to the scale,
and the rated items that raised its ranking score most (``because``). ``recommend`` and
``recommend_many`` (``melu.serving.batch``) both answer through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from melu.serving.rows import Scores
from melu.serving.topk import top_rows
from melu.serving.types import Adaptation, Reason, Recommendations, Request, Scored

if TYPE_CHECKING:
    from melu.serving.recommender import Recommender

REASONS = 3  # rated items named per recommendation, at most
REASON_SHARE = 0.3  # ... and only those adding at least this share of the strongest one's gain


def top(rec: Recommender, request: Request, scores: Scores, info: Adaptation) -> Recommendations:
    """The top ``k`` of the candidates by ranking score, rated ones left out when the
    request says so (ties by catalog order)."""
    rows, rating, rank = scores.rows, scores.rating, scores.rank
    excluded = scores.rated if request.exclude_rated and len(scores.rated) else None
    if rows is None:  # the whole catalog: rows are positions
        mine = rank.clone() if rank is rating else rank  # top_rows overwrites it
        best = top_rows(mine, request.k, excluded)
        return Recommendations(describe(rec, best, rating[best], scores), info)
    if excluded is not None:
        keep = ~torch.isin(rows, scores.rated)
        rows, rating, rank = rows[keep], rating[keep], rank[keep]
    order = torch.sort(rank, descending=True, stable=True).indices[: request.k]
    return Recommendations(describe(rec, rows[order], rating[order], scores), info)


def describe(
    rec: Recommender, rows: Tensor, ratings: Tensor, scores: Scores, added: Tensor | None = None
) -> list[Scored]:
    """Catalog rows (N,) and predicted ratings (N,) → ``Scored`` items (ratings clamped),
    each with the rated items that added most to its ranking score (best first);
    ``added``: their contributions (N, ≥ R) if the caller has them (``reasons``)."""
    clamped = ratings.clamp(*rec.scale).cpu().tolist()
    return items(rec, rows.cpu().tolist(), clamped, reasons(rec, rows, scores, added))


def items(
    rec: Recommender, rows: list[int], clamped: list[float], because: list[tuple[Reason, ...]]
) -> list[Scored]:
    """Catalog ``rows`` with their clamped predicted ratings and reasons as ``Scored`` items."""
    out = []
    for row, score, why in zip(rows, clamped, because, strict=True):
        item = rec.catalog.item(row)
        out.append(Scored(item.item_id, item.title, item.year, item.genres, score, why))
    return out


def reasons(
    rec: Recommender, rows: Tensor, scores: Scores, added: Tensor | None = None
) -> list[tuple[Reason, ...]]:
    """Up to ``REASONS`` rated items per row whose contribution is positive and at least
    ``REASON_SHARE`` of the row's strongest. ``added`` (N, L ≥ R): the contributions,
    the rated items first and 0 on padding (a batch's), when the caller has them."""
    if not len(scores.rated):
        return [()] * len(rows)
    if added is None:
        with torch.no_grad():
            added = rec.encoder.reasons(scores.params, rows, scores.bag)  # (N, R)
    rated, values = scores.rated.cpu().tolist(), scores.values.cpu().tolist()
    return named(rec, rated, values, strongest(added))


def strongest(added: Tensor) -> list[list[int]]:
    """Per row of contributions ``added`` (N, L): the slots of up to ``REASONS`` rated items,
    strongest first, that add a positive share of at least ``REASON_SHARE`` of the row's
    strongest (those that pass are always the first ones: the rule keeps larger gains)."""
    best = added.topk(min(REASONS, added.shape[-1]), dim=-1)
    return [
        picks[: _passing(gains)]
        for gains, picks in zip(best.values.tolist(), best.indices.tolist(), strict=True)
    ]


def _passing(gains: list[float]) -> int:
    """How many of a row's strongest ``gains`` (best first) name their rated item."""
    n = 0
    for gain in gains:
        if not (gain > 0 and gain >= REASON_SHARE * gains[0]):
            break
        n += 1
    return n


def named(
    rec: Recommender, rated: list[int], values: list[float], slots: list[list[int]]
) -> list[tuple[Reason, ...]]:
    """A person's rated catalog rows (R,) and ratings (R,), and per row the ``slots`` of
    those behind it → the ``Reason`` tuples (one ``Reason`` per rated item, shared)."""
    made = {}
    for j in {j for picks in slots for j in picks}:
        item = rec.catalog.item(rated[j])
        made[j] = Reason(item.item_id, item.title, float(values[j]))
    reason = made.__getitem__
    return [tuple(map(reason, picks)) for picks in slots]
