"""The one "adapt each task's support, predict its query" path, for every non-training use.

Training validation, scenario evaluation, the pooled + fine-tune baseline and onboarding all
get their post-adaptation predictions here: first order, no graph, tasks in chunks adapted
together by ``adapt(..., kernel="batched")``. Plain SGD has no optimiser state, so ``n``
inner steps equal ``n`` calls of one step (each anchored at the initialisation): one pass
yields the whole step curve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from melu.features import FeatureBatch, FeatureTables
from melu.model import personal
from melu.model.estimator import Encoded, PreferenceEstimator
from melu.model.items import ItemCache, catalog_rankings
from melu.model.kernel import task_predictions
from melu.model.maml import Examples, Lr, adapt, task_examples, trim
from melu.model.ranking import Bag
from melu.tasks import TaskSet


def predict_examples(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query: FeatureBatch,
    *,
    steps: Sequence[int],
    lr: Lr,
    fast: Sequence[str] | None = None,
) -> Tensor:
    """Query predictions (len(steps), T, Q) after each inner-step count in ``steps``.

    ``support`` (T, N) rows; ``query`` features (T, Q, ...). ``steps`` sorted ascending
    (0 = the initialisation). Adapts first order under ``torch.no_grad``.
    """
    names = list(fast) if fast is not None else model.fast_names()
    current: Mapping[str, Tensor] = params
    batched: list[str] = []  # names that carry a task dim so far
    done, out = 0, []
    with torch.no_grad():
        for n in steps:
            if n > done:
                current, _ = adapt(
                    model, current, support, steps=n - done, lr=lr, first_order=True,
                    fast=names, kernel="batched", anchor_at=params,
                )  # fmt: skip
                done, batched = n, names
            out.append(task_predictions(model, current, query, batched))
    return torch.stack(out)


def predict_queries(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    tasks: TaskSet,
    tables: FeatureTables,
    *,
    steps: int | Sequence[int],
    lr: Lr,
    fast: Sequence[str] | None = None,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Query predictions of every task after adapting on its support, in chunks of tasks.

    ``steps``: an inner-step count → (T, Q); or a sequence of counts (0 = the
    initialisation) → (len(steps), T, Q) in the order given. ``progress(n)`` is called
    with the tasks done per chunk.
    """
    counts = [steps] if isinstance(steps, int) else list(steps)
    order = sorted(set(counts))
    parts = []
    for start in range(0, len(tasks), chunk):
        index = slice(start, min(start + chunk, len(tasks)))
        support, query = task_examples(tasks, tables, index)
        parts.append(
            predict_examples(
                model, params, trim(support), query.inputs, steps=order, lr=lr, fast=fast
            )
        )
        if progress is not None:
            progress(index.stop - index.start)
    preds = torch.cat(parts, dim=1) if parts else torch.zeros(len(order), 0, 0)
    picked = preds[[order.index(n) for n in counts]]
    return picked[0] if isinstance(steps, int) else picked


def rank_catalog(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    users: FeatureBatch,
    support: Examples,
    catalog: Encoded | ItemCache,
    *,
    steps: int,
    lr: Lr,
    fast: Sequence[str] | None = None,
    network: Tensor | None = None,
    rated: Tensor | None = None,
) -> Tensor:
    """Ranking scores (T, I) of every catalog item for T people after adapting to their
    supports: the one ``adapt`` (first order, no graph) on ``support`` (T, N) — skipped
    when N = 0 or ``steps`` = 0 — then ``model.rank_score`` with the support as the head's
    bag. ``users``: each person's user fields (field → (T,) indices); ``catalog``: the
    items encoded once (``items`` (I, E_i), ``ids`` (I,); ``user`` unused), or their
    ``ItemCache`` (the same scores, its user-independent parts read, not recomputed).
    Pure: the head's parameters may carry a graph (training the head), the adaptation
    never does.
    ``network``: the MLP's output (T, I) if the caller has it cached (``rank_score``).
    ``rated`` (T, V): training only, the ids each user rated (``melu.model.ranking.Bag``).
    Outside training the scores are held to the head's personalisation rule
    (``personal.shown_scores``: at most SHOWN − ``rank.shared_cut`` of the list each person
    would see with no ratings stay in reach of their top 10; off at cut 0)."""
    names = list(fast) if fast is not None else model.fast_names()
    adapted: Mapping[str, Tensor] = params
    if steps and support.mask.shape[-1] and bool(support.mask.any()):
        with torch.no_grad():
            rating = {k: v.detach() for k, v in params.items() if not k.startswith("rank.")}
            fitted, _ = adapt(
                model, rating, support, steps=steps, lr=lr, first_order=True, fast=names,
                kernel="batched",
            )  # fmt: skip
        adapted = {**params, **{k: fitted[k] for k in names}}
    user = model.encode_user(params, users)  # (T, E_u)
    if user.dim() == 1:  # no user fields
        user = user.new_zeros((len(support.mask), 0))
    bag = None
    if model.ranking and model.id_field is not None:
        bag = model.bag(support.inputs[model.id_field], support.ratings, support.mask)
        bag = bag._replace(rated=rated)
    encoded = catalog.encoded if isinstance(catalog, ItemCache) else catalog
    encoded = Encoded(user, encoded.items, encoded.ids)

    def scored(weights: Mapping[str, Tensor], bag: Bag | None) -> Tensor:
        if isinstance(catalog, ItemCache):  # the catalog's user-independent parts, cached
            return catalog_rankings(model, weights, catalog, user, bag, network)[1]
        return model.rank_score(weights, encoded, bag, network)

    scores = scored(adapted, bag)
    if bag is None or rated is not None:
        return scores
    keep = personal.kept_of_list(params, bag)
    if keep is None:
        return scores
    # the personalisation rule: what the same people would see with no ratings
    empty = personal.list_of(scored(params, None))
    return personal.shown_scores(scores, encoded.ids, bag, empty, keep)
