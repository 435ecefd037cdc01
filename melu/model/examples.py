"""The rated rows of tasks as the inner loop reads them: ``Examples`` and how to build them.

``task_examples`` gathers a ``TaskSet``'s support and query rows with their features into
padded (T, N) ``Examples``; ``task_rows`` takes some of their tasks, ``trim`` drops the
padding slots no task uses. ``adapt`` and ``meta_loss`` (``melu.model.maml``, which
re-exports these) take them as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from melu.features import FeatureBatch, FeatureTables
from melu.tasks import TaskSet


class Examples(NamedTuple):
    """Rated rows of one task (N,) — or of a batch of tasks (T, N).

    ``inputs``: features (field → (…, N) / (…, N, L) indices); ``ratings`` (…, N) float;
    ``mask`` (…, N) bool, false on padding rows.
    """

    inputs: FeatureBatch
    ratings: Tensor
    mask: Tensor


def trim(examples: Examples) -> Examples:
    """Drop the trailing slots that are padding in every task: (T, N) → (T, n ≤ N).

    Real rows are packed first in each task, so this only removes work, never data.
    """
    used = examples.mask.any(0)
    n = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if n == examples.mask.shape[-1]:
        return examples
    inputs = {k: v[:, :n] for k, v in examples.inputs.items()}
    return Examples(inputs, examples.ratings[:, :n], examples.mask[:, :n])


def task_rows(examples: Examples, start: int, stop: int) -> Examples:
    """Tasks ``start:stop`` of a batch's (T, N) ``examples`` (views)."""
    inputs = {k: v[start:stop] for k, v in examples.inputs.items()}
    return Examples(inputs, examples.ratings[start:stop], examples.mask[start:stop])


def task_examples(
    tasks: TaskSet,
    tables: FeatureTables,
    index: Tensor | slice | None = None,
    device: torch.device | str | None = None,
) -> tuple[Examples, Examples]:
    """Support and query Examples (leading dim T) of ``tasks[index]`` with features gathered."""
    sel = tasks if index is None else tasks.select(index)
    if device is not None:
        sel = sel.to(device)
    users = sel.user_rows.long()

    def examples(items: Tensor, ratings: Tensor, mask: Tensor) -> Examples:
        features: FeatureBatch = tables.gather(users, items.long())
        return Examples(features, ratings.float(), mask.bool())

    return (
        examples(sel.support_items, sel.support_ratings, sel.support_mask),
        examples(sel.query_items, sel.query_ratings, sel.query_mask),
    )
