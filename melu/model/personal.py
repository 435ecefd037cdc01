"""The ranking head's personalisation rule: a list held away from the generic one.

A person's *no-ratings list* is the SHOWN items the head ranks first for them with no
ratings (the bundle's unadapted weights, an empty support). With the rule on, once a
person's support reaches the buckets ``rank.shared_cut`` covers, all but their
SHOWN − κ best-scored items of that list are moved below every other candidate, so a
top-SHOWN shares at most that many with it (κ = ``rank.shared_cut`` of their support-size
bucket; 0: off, the default — RESULTS.md, sixth pass, has its price). The part-weight pick
judges lists with it applied (``melu.training.rank_mix``); ``melu.model.predict.rank_catalog``
and the service apply it to what they rank.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.model.ranking import SUPPORT_BUCKETS, Bag, bucket_weight

SHOWN = 10  # the length of the list a person sees, and of the no-ratings list it is held to


def limit_shared(scores: Tensor, empty: Tensor, keep: Tensor) -> Tensor:
    """``scores`` (..., T, I) with all but each user's ``keep`` (T,) best-scored items of
    their no-ratings list ``empty`` (T, SHOWN) (catalog rows) pushed below every other item,
    in their order: then a top-10 shares at most ``keep`` items with that list (a
    personalisation rule, ``rank.shared_cut``). Leading dimensions are several score sets
    (mixes) of the same users. Items already out (score −inf: the support, non-candidates)
    take no place among the kept; ``keep`` ≥ SHOWN changes nothing."""
    index = empty.expand(*scores.shape[:-1], empty.shape[-1])
    own = scores.gather(-1, index)  # (..., T, SHOWN)
    place = torch.sort(own, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    cut = (place >= keep.unsqueeze(-1)) & torch.isfinite(own)
    if not bool(cut.any()):
        return scores
    low = scores.masked_fill(~torch.isfinite(scores), torch.inf).amin(-1, keepdim=True)
    spread = own.masked_fill(~torch.isfinite(own), 0.0)
    top = spread.amax(-1, keepdim=True)
    # below the user's lowest finite score, keeping the cut items' own order among them
    moved = low - 1.0 - (top - spread)
    return scores.scatter(-1, index, torch.where(cut, moved, own))


def list_of(scores: Tensor) -> Tensor:
    """(..., SHOWN) the catalog rows of the SHOWN best of ``scores`` (..., I), best first
    (all rows of a smaller catalog): the no-ratings list, from the scores of no ratings."""
    return scores.topk(min(SHOWN, scores.shape[-1]), dim=-1).indices


def kept_of_list(params: Mapping[str, Tensor], bag: Bag) -> Tensor | None:
    """(T,): how many of each user's no-ratings list may stay in reach of their top 10
    (SHOWN − ``rank.shared_cut`` of their support-size bucket), or None when the rule
    leaves every one of them as it is (so the caller need not rank the list at all)."""
    cut = params.get("rank.shared_cut")
    if cut is None or not bool((cut > 0).any()):
        return None
    keep = SHOWN - bucket_weight(cut.to(bag.mask.device), bag)[:, 0].round().long()
    return keep if bool((keep < SHOWN).any()) else None


def shown_scores(scores: Tensor, ids: Tensor, bag: Bag, empty: Tensor, keep: Tensor) -> Tensor:
    """``scores`` (T, I) of catalog items with ids ``ids`` (I,) held to the personalisation
    rule: ``limit_shared`` with each user's no-ratings list ``empty`` (T, SHOWN) (catalog
    rows) and ``keep`` (T,) (``kept_of_list``), their support's items (``bag``) out of the
    count and left at their scores (callers drop them anyway)."""
    n_ids = int(max(int(ids.max()), int(bag.ids.max()) if bag.ids.numel() else 0)) + 1
    rated = torch.zeros(len(bag.mask), n_ids, dtype=torch.bool, device=scores.device)
    rated.scatter_(1, bag.ids.masked_fill(~bag.mask, 0).long(), True)
    rated[:, 0] = False  # unknown ids name no catalog item
    rated = rated[:, ids]  # (T, I)
    limited = limit_shared(scores.masked_fill(rated, -torch.inf), empty, keep)
    return torch.where(rated, scores, limited)


def shared_cut(keep_shared: int, shared_from: int) -> Tensor:
    """``rank.shared_cut`` (B,): SHOWN − ``keep_shared`` in the buckets of ``shared_from``
    ratings or more (never the no-ratings bucket), 0 (off) in the others."""
    limited = [b > 0 and SUPPORT_BUCKETS[b] >= shared_from
               for b in range(len(SUPPORT_BUCKETS))]  # fmt: skip
    return torch.tensor([float(SHOWN - keep_shared) if x else 0.0 for x in limited])
