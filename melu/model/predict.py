"""Query predictions after per-user adaptation, for evaluation: ``adapt`` + ``vmap`` in chunks.

Evaluation adapts first-order and without a graph (nothing is differentiated afterwards).
Plain SGD has no optimiser state, so ``steps`` inner steps equal ``steps`` calls of one step;
``predict_curve`` uses that to get the whole steps curve from one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from melu.features import FeatureTables
from melu.model.estimator import PreferenceEstimator, apply
from melu.model.maml import Examples, adapt, precompute, task_examples, trim
from melu.tasks import TaskSet

Lr = float | Mapping[str, Tensor]


def _adapt_chunk(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query: Examples,
    steps: Sequence[int],
    lr: Lr,
    fast: list[str],
) -> Tensor:
    """Predictions (len(steps), T, Q) after each number of inner steps in ``steps`` (sorted)."""

    def one(s: Examples, q: Examples) -> Tensor:
        current: Mapping[str, Tensor] = params
        done, out = 0, []
        for n in steps:
            if n > done:
                current, _ = adapt(
                    model, current, s, steps=n - done, lr=lr, first_order=True, fast=fast
                )
                done = n
            out.append(apply(model, current, q.inputs))
        return torch.stack(out)

    support = precompute(model, params, trim(support), fast)
    query = precompute(model, params, query, fast)
    return vmap(one, randomness="error")(support, query).transpose(0, 1)


def predict_curve(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    tasks: TaskSet,
    tables: FeatureTables,
    *,
    steps: Sequence[int],
    lr: Lr,
    fast: Sequence[str] | None = None,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Query predictions (len(steps), T, Q) after adapting on each task's support.

    ``steps`` are inner-step counts (0 = the initialisation, no adaptation); the results
    are in the order given. ``progress(n)`` is called with the tasks done per chunk.
    """
    names = list(fast) if fast is not None else model.fast_names()
    order = sorted(set(steps))
    parts = []
    with torch.no_grad():
        for start in range(0, len(tasks), chunk):
            index = slice(start, min(start + chunk, len(tasks)))
            support, query = task_examples(tasks, tables, index)
            parts.append(_adapt_chunk(model, params, support, query, order, lr, names))
            if progress is not None:
                progress(index.stop - index.start)
    preds = torch.cat(parts, dim=1) if parts else torch.zeros(len(order), 0, 0)
    return preds[[order.index(n) for n in steps]]


def predict_adapted(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    tasks: TaskSet,
    tables: FeatureTables,
    *,
    steps: int,
    lr: Lr,
    fast: Sequence[str] | None = None,
    chunk: int = 256,
) -> Tensor:
    """Query predictions (T, Q) after ``steps`` first-order inner steps on each support."""
    return predict_curve(
        model, params, tasks, tables, steps=[steps], lr=lr, fast=fast, chunk=chunk
    )[0]
