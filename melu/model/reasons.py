"""Why the ranking head recommends an item: what each rated movie adds to its score.

``contributions`` splits the head's item–item parts (``melu.model.ranking``: the learned
matrix, EASE^R, the liked-target part and RP³β's walk) by support item; the service names the strongest
as "because you rated …" (``melu.serving.results``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from melu.model.ranking import PICKED, Bag, bucket_weight


def contributions(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """What each bag item adds to each item's score through the head's item–item parts,
    w(r_j)·B[j, i] + c_e·w_e(r_j)·B_EASE[j, i] + Σ_part c·w(r_j)·M_part[j, i] (T, N, L) over
    the picked parts (``ranking.PICKED``: liked-target, walk), for
    items ``ids`` (T, N): the reasons behind a recommendation (0 for unknown ids, padding
    and the item itself)."""
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
    same = bag.ids.unsqueeze(-2) == ids.unsqueeze(-1)
    known = (ids != 0).unsqueeze(-1)
    return torch.where(same | ~known, 0.0, added)


__all__ = ["contributions"]
