"""Why the ranking head recommends an item: what each rated movie adds to its score.

``contributions`` splits the head's item–item parts (``melu.model.ranking``: the learned
matrix, EASE^R, the liked-target part and RP³β's walk) and its user-kNN part by support
item; the service names the strongest as "because you rated …" (``melu.serving.results``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.model.ranking import PICKED, Bag, bucket_weight, neighbour_votes, rows_of


def contributions(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """What each bag item adds to each item's score through the head's item–item parts,
    w(r_j)·B[j, i] + c_e·w_e(r_j)·B_EASE[j, i] + Σ_part c·w(r_j)·M_part[j, i] (T, N, L) over
    the picked parts (``ranking.PICKED``: liked-target, walk), for
    items ``ids`` (T, N): the reasons behind a recommendation (0 for unknown ids, padding
    and the item itself); plus the user-kNN part's votes, each training user's w_v·Y[i, v]
    shared equally among the bag items they rated (``_neighbour_shares``)."""
    known_bag = bag.mask & (bag.ids != 0)
    weight = params["rank.level_weight"][bag.levels] * known_bag  # (T, L)
    weight = weight * bucket_weight(params["rank.learned_weight"], bag)
    pairs = params["rank.item_item"][bag.ids.unsqueeze(-2), ids.unsqueeze(-1)]  # (T, N, L)
    prec = params["rank.ease"]
    diag = prec.diagonal()[ids].unsqueeze(-1)  # (T, N, 1)
    ease = -prec[bag.ids.unsqueeze(-2), ids.unsqueeze(-1)] / torch.where(diag > 0, diag, 1.0)
    ease_weight = bucket_weight(params["rank.ease_weight"], bag)
    ease_weight = ease_weight * params["rank.ease_level"][bag.levels] * known_bag
    added = pairs * weight.unsqueeze(-2) + ease * ease_weight.unsqueeze(-2)
    for part in PICKED:
        matrix = params[f"rank.{part}"][bag.ids.unsqueeze(-2), ids.unsqueeze(-1)]  # (T, N, L)
        part_weight = bucket_weight(params[f"rank.{part}_weight"], bag)
        part_weight = part_weight * params[f"rank.{part}_level"][bag.levels] * known_bag
        added = added + matrix * part_weight.unsqueeze(-2)
    added = added + _neighbour_shares(params, bag, ids)
    same = bag.ids.unsqueeze(-2) == ids.unsqueeze(-1)
    known = (ids != 0).unsqueeze(-1)
    return torch.where(same | ~known, 0.0, added)


def _neighbour_shares(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c_n·Σ_v (w_v / o_v)·X[j, v]·Y[i, v] (T, N, L): the user-kNN part split by bag item j,
    a training user's vote for i divided equally among the o_v bag items they rated (so the
    shares sum to ``ranking.neighbour_scores``); 0 without neighbours or on a training
    user's episode."""
    liked = params["rank.neighbour_liked"]
    if bag.rated is not None or liked.shape[-1] == 0:
        return torch.zeros((*ids.shape[-1:], bag.ids.shape[-1]), dtype=liked.dtype).expand(
            len(bag.ids), -1, -1
        )
    votes = neighbour_votes(params, bag)
    share = votes.weight / votes.overlap.clamp(min=1.0)  # (T, V)
    rated = rows_of(params["rank.neighbour_rated"], bag.ids) * votes.first.unsqueeze(-1)
    targets = rows_of(liked, ids)  # (T|-, N, V)
    if targets.dim() == 2:
        targets = targets.unsqueeze(0).expand(len(share), -1, -1)
    split = torch.einsum("tv,tlv,tnv->tnl", share, rated, targets)
    return bucket_weight(params["rank.neighbour_weight"], bag).unsqueeze(-1) * split


__all__ = ["contributions"]
