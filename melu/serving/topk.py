"""The top k of a score vector, ties by row order, some rows left out: without a full sort.

``top_rows`` returns what ``torch.sort(scores, descending=True, stable=True)`` would put
first among the rows kept, at the cost of a ``topk`` plus a sort of the rows tied at or
above the k-th score (usually k of them) instead of a sort of the whole catalog.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_rows(scores: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Rows (≤ k,) of ``scores`` (N,) with the highest scores, best first, ties by row
    order; rows in ``exclude`` (R,) never come back (fewer than k only when fewer remain).

    ``scores`` is overwritten with -inf at ``exclude`` (pass a vector you own)."""
    n = len(scores) - (0 if exclude is None else len(exclude))
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    if exclude is not None and len(exclude):
        scores.index_fill_(0, exclude, float("-inf"))
    kth = scores.topk(k).values[-1]  # the k-th best kept score (kept rows outnumber k)
    tied = (scores >= kth).nonzero().squeeze(1)  # in row order: every row that can place
    if exclude is not None and len(exclude) and bool(kth == float("-inf")):
        tied = tied[~torch.isin(tied, exclude)]  # kept rows scored -inf tie with the excluded
    order = torch.sort(scores[tied], descending=True, stable=True).indices[:k]
    return tied[order]


def top_rows_many(
    scores: Tensor, k: Tensor, exclude: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``top_rows`` for T people at once: ``scores`` (T, N), each person's ``k`` (T,) and the
    excluded ``(person, row)`` pairs (E,) each. Returns the picks as ``(person, row)`` (M,)
    each, grouped by person in order and best first within a person (what ``top_rows``
    gives each one, in a few ops over the whole block instead of ~10 per person).

    ``scores`` is overwritten with -inf at ``exclude`` (pass a block you own)."""
    people, n = scores.shape
    excluded = torch.zeros(people, dtype=torch.long, device=scores.device)
    if exclude is not None and len(exclude[0]):
        scores.index_put_(exclude, torch.tensor(float("-inf"), device=scores.device))
        excluded.index_add_(0, exclude[0], torch.ones_like(exclude[0]))
    k = torch.minimum(k, n - excluded)  # fewer only when fewer rows are kept
    most = int(k.max())
    if most <= 0:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return empty, empty
    kth = scores.topk(most, dim=1).values.gather(1, (k - 1).clamp(min=0).unsqueeze(1))  # (T, 1)
    tied = scores >= kth  # every row that can place, per person
    if exclude is not None and len(exclude[0]):
        tied.index_put_(exclude, torch.tensor(False, device=scores.device))  # -inf ties
    person, row = tied.nonzero(as_tuple=True)  # person by person, rows in row order
    order = torch.sort(scores[person, row], descending=True, stable=True).indices
    order = order[torch.sort(person[order], stable=True).indices]  # by person, then score
    person, row = person[order], row[order]
    counts = torch.bincount(person, minlength=people)
    place = torch.arange(len(person), device=scores.device) - (counts.cumsum(0) - counts)[person]
    keep = place < k[person]
    return person[keep], row[keep]
