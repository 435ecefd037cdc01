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
