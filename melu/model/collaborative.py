"""The collaborative part b_i + b_u + p_u·q_i that ``ModelConfig.factors`` adds to the network.

Its parameters (``factor_shapes``), its item side (``item_terms``), its user side
(``user_state``: the prior from the user's embeddings plus the fast offsets) and its score
(``collaborative``), as pure functions of ``(params, rows)``; ``PreferenceEstimator`` adds
it to the MLP's output (``melu.model.estimator``, which re-exports ``collaborative`` and
``item_terms``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from melu.model.estimator import Encoded


def part_shapes(
    k: int, embedding_width: int, user_width: int, ids: int | None
) -> dict[str, torch.Size]:
    """The part's parameters for ``k`` factors (none when k = 0): ``content`` maps the item
    fields' embeddings (embedding_width - user_width) and ``prior`` the user's (user_width)
    to (bias, factor); ``user.*`` are the fast offsets; ``item.*`` one row per item id
    (``ids`` of them; none without an id field)."""
    if not k:
        return {}
    out = {
        "content.weight": torch.Size((k + 1, embedding_width - user_width)),
        "prior.weight": torch.Size((k + 1, user_width)),
        "prior.bias": torch.Size((k + 1,)),
        "user.bias": torch.Size((1,)),
        "user.factor": torch.Size((k,)),
    }
    if ids is not None:
        out["item.bias"], out["item.factor"] = torch.Size((ids,)), torch.Size((ids, k))
    return out


def user_state(params: Mapping[str, Tensor], user: Tensor) -> Tensor:
    """The user's bias and factor (..., 1 + k): prior of the user's embeddings ``user``
    (..., E_u) plus the (adapted) fast offsets."""
    prior = user @ params["prior.weight"].mT + params["prior.bias"]
    offset = torch.cat([params["user.bias"], params["user.factor"]], dim=-1)
    return prior + offset


def collaborative(
    params: Mapping[str, Tensor], encoded: Encoded, items: Tensor | None = None
) -> Tensor:
    """b_i + b_u + p_u·q_i (..., N): the model part that ``ModelConfig.factors`` adds.

    Item side: ``content.weight`` (k+1, E_i) maps an item's feature embeddings to a content
    estimate of (b_i, q_i), to which known items add their own ``item.bias`` / ``item.factor``
    rows (index 0, unknown or new items, is one shared row). User side: ``prior`` maps the
    user's feature embeddings to a prior (b_u⁰, p_u⁰); the fast ``user.bias`` (1,) and
    ``user.factor`` (k,) — per task (T, ...) in the batched kernel — are offsets from it.
    ``items``: the rows' ``item_terms`` when the caller has them cached (a catalog's).
    """
    item = item_terms(params, encoded) if items is None else items  # (..., N, k+1)
    user = encoded.user @ params["prior.weight"].mT + params["prior.bias"]  # (..., k+1)
    bias = user[..., 0] + params["user.bias"][..., 0]  # (...)
    factor = user[..., 1:] + params["user.factor"]  # (..., k)
    return item[..., 0] + bias.unsqueeze(-1) + (item[..., 1:] * factor.unsqueeze(-2)).sum(-1)


def item_terms(params: Mapping[str, Tensor], encoded: Encoded) -> Tensor:
    """The collaborative part's item side (b_i, q_i) per row (..., N, k+1): the content
    estimate from the item's feature embeddings plus the known item's own rows."""
    item = encoded.items @ params["content.weight"].mT  # (..., N, k+1)
    if "item.bias" in params:
        item = item + torch.cat(
            [params["item.bias"][encoded.ids].unsqueeze(-1), params["item.factor"][encoded.ids]],
            dim=-1,
        )
    return item
