"""Packed meta-batches: a meta-batch's support and query in affine form, built from its
real rows only.

With the linear kernel (``melu.model.linear``: only the user's bias and factor adapt) the
network and the item side of the collaborative part do not depend on what adapts, so they
run once per meta-batch over the real rows of every task, support and query together,
packed without padding (R rows): one embedding lookup per table, one pass of the MLP, one
gradient per table in the backward pass. Only the results, (R, 1 + k) numbers, are placed
into padded (T, N) slots for the inner loop. The padded, bucketed path computes the same
losses and meta-gradient (tests/test_packed.py pins the two to each other in float64).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from melu.features import FeatureBatch
from melu.model.collaborative import item_terms
from melu.model.estimator import Encoded, Params, PreferenceEstimator
from melu.model.linear import Affine, AffineExamples, at_prior, user_prior
from melu.tables import FeatureTables
from melu.tasks import TaskSet
from melu.training.episodes import hide_items


class _Slots(NamedTuple):
    """The real rows of T tasks' (T, S) slots: ``task``, ``slot`` (R,) where they sit,
    ``items`` (R,) their item rows; ``ratings``, ``mask`` (T, n) trimmed to the longest."""

    task: Tensor
    slot: Tensor
    items: Tensor
    ratings: Tensor
    mask: Tensor


def _slots(items: Tensor, ratings: Tensor, mask: Tensor) -> _Slots:
    """``_Slots`` of padded (T, S) arrays whose real rows come first in each task."""
    mask = mask.bool()
    width = max(int(mask.sum(-1).max()) if mask.numel() else 0, 1)
    task, slot = mask.nonzero(as_tuple=True)
    return _Slots(task, slot, items[task, slot].long(), ratings[:, :width].float(), mask[:, :width])


def packed_examples(
    model: PreferenceEstimator,
    params: Params,
    tasks: TaskSet,
    tables: FeatureTables,
    index: Tensor,
    hidden: Tensor | None = None,
) -> tuple[AffineExamples, AffineExamples]:
    """Support and query of ``tasks[index]`` (T tasks) in affine form under ``params``.

    ``hidden`` (V,) bool: item ids shown as unknown in this meta-batch (``hide_items``).
    Differentiable w.r.t. ``params``: the meta-gradient flows through the packed rows.
    """
    sel = tasks.select(index)
    support = _slots(sel.support_items, sel.support_ratings, sel.support_mask)
    query = _slots(sel.query_items, sel.query_ratings, sel.query_mask)
    items: FeatureBatch = {
        name: table[torch.cat([support.items, query.items])] for name, table in tables.items.items()
    }  # (R,) or (R, L)
    field = model.id_field
    if hidden is not None and field is not None:
        items = hide_items(items, field, hidden)
    rows = model.encode_items(params, items, bags=True)  # (R, E_i)
    users = sel.user_rows.long()
    if model.user_field_names:
        user = model.encode_user(
            params, {n: tables.users[n][users] for n in model.user_field_names}
        )
    else:
        user = rows.new_zeros((len(users), 0))
    ids = items[field] if field is not None else torch.zeros_like(rows[:, 0], dtype=torch.long)
    task = torch.cat([support.task, query.task])  # (R,) the task of each row
    item = item_terms(params, Encoded(user, rows, ids))  # (R, k+1)
    network = model.network_rows(params, model.user_layer(params, user)[task], rows)  # (R,)
    form = at_prior(network, item, user_prior(params, user)[task])
    terms = torch.cat([form.base.unsqueeze(-1), form.factors], dim=-1)  # (R, 1+k)
    split = len(support.task)
    return _affine_examples(terms[:split], support), _affine_examples(terms[split:], query)


def _affine_examples(terms: Tensor, slots: _Slots) -> AffineExamples:
    """Packed (R, 1 + k) terms placed into their (T, n) slots (padding: zeros, masked)."""
    tasks, width = slots.mask.shape
    padded = terms.new_zeros(tasks, width, terms.shape[-1])
    padded = padded.index_put((slots.task, slots.slot), terms)  # (T, n, k+1)
    rows = Affine(padded[..., 0], padded[..., 1:])
    return AffineExamples(rows, slots.ratings, slots.mask)
