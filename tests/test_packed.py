"""Packed meta-batches (the default model's training path) == the padded, bucketed one.

Float64 tiny problems built here: the linear kernel on rows packed without padding gives
the same per-task query losses, inner losses and second-order meta-gradient of every
parameter as the batched kernel on the padded, size-bucketed examples the trainer used
before (``meta_loss(kernel="batched")`` on ``task_examples``), hidden items included.
"""

from __future__ import annotations

import pytest
import torch
from test_factors import factor_model
from test_maml import grads_of, tiny_space

from melu.model.maml import meta_loss, task_examples, trim
from melu.tasks import TaskSet
from melu.training.episodes import hide_items
from melu.training.packed import packed_examples

STEPS, LR = 3, 0.2


def tiny_tasks(tasks: int = 6, width: int = 7, seed: int = 4) -> TaskSet:
    """Tasks with 1..width support rows and 1..4 query rows, real rows first."""
    gen = torch.Generator().manual_seed(seed)
    s_n = torch.tensor([1, width, 3, 2, 5, 4])[:tasks]
    q_n = torch.tensor([4, 1, 2, 4, 3, 4])[:tasks]
    s_mask = torch.arange(width) < s_n[:, None]
    q_mask = torch.arange(4) < q_n[:, None]
    s_items = torch.randint(0, 8, (tasks, width), generator=gen) * s_mask
    q_items = torch.randint(0, 8, (tasks, 4), generator=gen) * q_mask
    s_rat = torch.randint(1, 6, (tasks, width), generator=gen).double() * s_mask
    q_rat = torch.randint(1, 6, (tasks, 4), generator=gen).double() * q_mask
    users = torch.arange(tasks) % 4
    return TaskSet(users, users + 1, s_items, s_rat, s_mask, q_items, q_rat, q_mask)


def padded_losses(model, params, tasks, tables, index, hidden, buckets):  # type: ignore[no-untyped-def]
    """The bucketed, padded reference: sorted by support size, each bucket trimmed."""
    sizes = tasks.support_mask[index].sum(1)
    order = index[sizes.argsort(stable=True)]
    per_task, inners = [], []
    for part in order.tensor_split(buckets):
        support, query = task_examples(tasks, tables, part)
        if hidden is not None:
            support = support._replace(inputs=hide_items(support.inputs, "item", hidden))
            query = query._replace(inputs=hide_items(query.inputs, "item", hidden))
        _, losses, inner = meta_loss(
            model, params, trim(support), trim(query), steps=STEPS, lr=LR, kernel="batched"
        )
        per_task.append(losses)
        inners.append(inner)
    return order, torch.cat(per_task), torch.cat(inners)


@pytest.mark.parametrize("buckets", [1, 3])
@pytest.mark.parametrize("hide", [False, True])
def test_packed_linear_meta_batch_equals_the_padded_batched_one(buckets: int, hide: bool) -> None:
    model, params = factor_model("user")
    _, tables = tiny_space()
    tasks, index = tiny_tasks(), torch.tensor([4, 0, 5, 1, 3])
    hidden = torch.tensor([False, True, False, False, True, False, False, False, True])
    hidden = hidden[: int(tables.items["item"].max()) + 1] if hide else None
    support, query = packed_examples(model, params, tasks, tables, index, hidden)
    _, per_task, inner = meta_loss(
        model, params, support, query, steps=STEPS, lr=LR, kernel="linear"
    )
    order, ref_task, ref_inner = padded_losses(model, params, tasks, tables, index, hidden, buckets)
    back = {int(t): i for i, t in enumerate(index)}
    rows = torch.tensor([back[int(t)] for t in order])  # reference order → packed order
    assert (per_task[rows] - ref_task).abs().max() < 1e-12
    assert (inner[rows] - ref_inner).abs().max() < 1e-12
    packed = grads_of(per_task.sum(), params)
    padded = grads_of(ref_task.sum(), params)
    for k in params:
        assert (packed[k] - padded[k]).abs().max() < 1e-10, k
    assert packed["embeddings.genres.weight"].abs().sum() > 0  # multi-valued field, as bags
    assert support.mask.shape == (5, 7) and query.mask.shape == (5, 4)  # trimmed to the longest


def test_packed_rows_leave_padding_slots_out_of_every_loss() -> None:
    """Padding slots hold zeros in affine form and are masked: changing the padded item
    rows of the task set changes nothing."""
    model, params = factor_model("user")
    _, tables = tiny_space()
    tasks = tiny_tasks()
    other = TaskSet(
        tasks.user_rows, tasks.user_ids,
        torch.where(tasks.support_mask, tasks.support_items, 7), tasks.support_ratings,
        tasks.support_mask, tasks.query_items, tasks.query_ratings, tasks.query_mask,
    )  # fmt: skip
    index = torch.arange(6)
    losses = [
        meta_loss(
            model, params, *packed_examples(model, params, t, tables, index), steps=STEPS,
            lr=LR, kernel="linear",
        )[1]
        for t in (tasks, other)
    ]  # fmt: skip
    assert torch.equal(losses[0], losses[1])
