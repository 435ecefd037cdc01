"""The collaborative model part: b_i + b_u + p_u·q_i, added to the MLP's output.

Item side: ``content.weight`` (k+1, E_i) maps an item's feature embeddings to a content
estimate of (b_i, q_i), to which known items add their own ``item.bias`` / ``item.factor``
rows (index 0, unknown or new items, is one shared row). User side: ``prior`` maps the
user's feature embeddings to a prior (b_u⁰, p_u⁰); the fast ``user.bias`` (1,) and
``user.factor`` (k,) — per task (T, ...) in the batched kernels — are offsets from it.

The item side does not depend on the user, so a catalog's ``item_terms`` are computed once
(``melu.model.items``); the prediction is linear in the fast offsets, which is what lets
``adapt(..., kernel="linear")`` take their gradient in closed form (``linear_terms``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from melu.model.estimator import Encoded

# the fast parameters that enter the prediction linearly (through this part only)
LINEAR = ("user.bias", "user.factor")


def item_terms(params: Mapping[str, Tensor], encoded: Encoded) -> Tensor:
    """(b_i, q_i) (..., N, k+1) of encoded rows: the content estimate plus known ids' rows."""
    item = encoded.items @ params["content.weight"].mT  # (..., N, k+1)
    if "item.bias" in params:
        item = item + torch.cat(
            [params["item.bias"][encoded.ids].unsqueeze(-1), params["item.factor"][encoded.ids]],
            dim=-1,
        )
    return item


def collaborative(
    params: Mapping[str, Tensor], encoded: Encoded, items: Tensor | None = None
) -> Tensor:
    """b_i + b_u + p_u·q_i (..., N): the model part that ``ModelConfig.factors`` adds.

    ``items``: the rows' ``item_terms`` (..., N, k+1) when the caller has them cached."""
    item = item_terms(params, encoded) if items is None else items
    user = encoded.user @ params["prior.weight"].mT + params["prior.bias"]  # (..., k+1)
    bias = user[..., 0] + params["user.bias"][..., 0]  # (...)
    factor = user[..., 1:] + params["user.factor"]  # (..., k)
    return item[..., 0] + bias.unsqueeze(-1) + (item[..., 1:] * factor.unsqueeze(-2)).sum(-1)


def linear_terms(
    params: Mapping[str, Tensor], encoded: Encoded, items: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The part as a linear function of the fast offsets (b, f) = (``user.bias``,
    ``user.factor``): ``collaborative = offset + b + q·f`` with ``offset`` (..., N), the
    part at b = f = 0, and ``q`` (..., N, k), each row's item factor (its gradient in f).
    ``items``: the rows' ``item_terms`` when the caller has them cached."""
    prior = params["prior.bias"]  # (k+1,): the offsets' shapes are (1,) and (k,)
    zero = {
        **params,
        "user.bias": prior.new_zeros(1),
        "user.factor": prior.new_zeros(len(prior) - 1),
    }
    item = item_terms(params, encoded) if items is None else items
    return collaborative(zero, encoded, item), item[..., 1:]
