"""MAML on the functional preference estimator: the one ``adapt()`` and ``meta_loss()``.

``adapt`` is the only inner loop in melu: training, evaluation, onboarding and the service
all call it. It differentiates the masked support MSE and returns *new* parameters (a
dict update), so the meta-gradient flows through every inner step (second order) unless
``first_order=True`` cuts it at the inner gradients (FOMAML). This is the fix to the
original MeLU, whose ``load_state_dict`` fast weights silently cut the graph. The generic
path uses ``torch.func.grad`` on ``functional_call``; for a batch of tasks whose fast group
is the MLP (the default) the same gradient is written out by hand in batched matmuls —
tests/test_maml.py pins the two paths to each other (1e-10, float64) and the
meta-gradient to finite differences.

``meta_loss`` runs a meta-batch of tasks together: padded support and query rows carry
masks, so tasks of different sizes share one kernel launch. With shared embeddings and an
MLP fast group (the default) the tasks get per-task (T, ...) weight views and ``adapt``
runs them at once with a hand-derived MLP backward; otherwise ``torch.vmap``.

Default inner loop (``MetaConfig``): 5 SGD steps at lr 0.05 on the MLP. MeLU's 1 step at
5e-6 moves an MLP whose inputs are O(1) embeddings by ~1e-6 of a rating: adaptation does
nothing. Measured on ml-100k validation users (41 tasks, query MAE, best of 15 epochs,
second order, meta-batch 32, before the item-id feature; global-mean predictor 0.911; the
re-check over seeds with the item id is in RESULTS.md):

=============  =====================  ==================================
inner loop     val MAE before → after  train support MSE before → after
=============  =====================  ==================================
1 × 5e-6       0.907 → 0.907          1.13 → 1.13 (no adaptation at all)
1 × 0.1        1.184 → 0.878          2.23 → 0.97
3 × 0.1        1.060 → 0.866          1.54 → 0.90
5 × 0.02       1.036 → 0.859          1.51 → 0.72
5 × 0.05       1.050 → 0.855          1.54 → 0.75
5 × 0.1        1.051 → 0.879          1.43 → 0.89
=============  =====================  ==================================

5 × 0.05 adapts best; the meta-learned initialisation is then deliberately *not* a good
predictor on its own (MAE before > global mean): it is a starting point for 5 steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from melu.features import FeatureBatch, FeatureTables
from melu.model.estimator import (
    Embedded,
    Inputs,
    Params,
    PreferenceEstimator,
    apply,
    embed_factored,
)
from melu.tasks import TaskSet


class Examples(NamedTuple):
    """Rated rows of one task (N,) — or of a meta-batch (T, N) before ``vmap``.

    ``inputs``: features (field → (N,) / (N, L)) or embeddings (N, E); ``ratings`` (N,)
    float; ``mask`` (N,) bool, false on padding rows.
    """

    inputs: Inputs
    ratings: Tensor
    mask: Tensor


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """mean over real rows of (pred - target)²; () for (N,) inputs. 0 if no real rows."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def adapt(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = False,
    fast: Sequence[str] | None = None,
) -> tuple[Params, Tensor]:
    """Adapt ``params`` to one task's support set by ``steps`` of gradient descent.

    Only the ``fast`` parameters (default: the model's configured group) change; ``lr`` is
    a float or a per-parameter tensor dict (Meta-SGD). Returns the adapted parameters and
    the support loss before each step and after the last, shape (steps + 1,). Never
    mutates ``params`` or the module.

    Also adapts T tasks at once without ``vmap`` (``meta_loss``'s fast path): fast MLP
    parameters with a leading task dim (T, ...) and a (T, N) ``support`` of embedded rows.
    Tasks are independent, so the gradient of the *sum* of their losses w.r.t. the
    per-task parameters is each task's own gradient; losses are then (T, steps + 1).
    """
    names = list(fast) if fast is not None else model.fast_names()
    if (
        isinstance(support.inputs, Embedded)
        and support.mask.dim() == 2
        and sorted(names) == sorted(model.fast_names("mlp"))
        and params[names[0]].dim() == 3
    ):
        return _adapt_mlp_tasks(model, params, support, steps, lr, first_order)
    frozen = {k: v for k, v in params.items() if k not in names}
    fast_params = {k: params[k] for k in names}

    def support_loss(fp: Params) -> tuple[Tensor, Tensor]:
        pred = apply(model, {**frozen, **fp}, support.inputs)
        per_task = masked_mse(pred, support.ratings, support.mask)  # () or (T,)
        return per_task.sum(), per_task

    step = grad_and_value(support_loss, has_aux=True)
    losses = []
    for _ in range(steps):
        grads, (_, loss) = step(fast_params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast_params = {
            k: p - (lr[k] if isinstance(lr, Mapping) else lr) * grads[k]
            for k, p in fast_params.items()
        }
        losses.append(loss)
    losses.append(support_loss(fast_params)[1])
    return {**frozen, **fast_params}, torch.stack(losses, dim=-1)


def embeds_are_shared(model: PreferenceEstimator, fast: Sequence[str]) -> bool:
    return not any(name.startswith("embeddings.") for name in fast)


def _adapt_mlp_tasks(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool,
) -> tuple[Params, Tensor]:
    """``adapt`` of T tasks at once when the fast group is the whole MLP (the default).

    Same math as the generic path (pinned by tests/test_maml.py to 1e-10 in float64): the
    support-MSE gradient is back-propagated by hand through the Linear/ReLU stack, in a
    few batched matmuls per layer, so the meta-gradient is autograd through ~20 ops per
    step instead of through ``torch.func.grad``'s graph. The first layer's weight is kept
    split into its user and item column blocks for the whole loop (joined once at the
    end), so the user's share costs one (H, E_u) product per task and step.

    ``params``: fast MLP weights (T, H, W) and biases (T, H); ``support.inputs`` is
    ``Embedded`` (user (T, E_u), items (T, N, E_i)). Returns (params, losses (T, steps+1)).
    """
    inputs = support.inputs
    assert isinstance(inputs, Embedded)
    user, items = inputs.user, inputs.items  # (T, E_u), (T, N, E_i)
    width = user.shape[-1]
    linears = [
        (f"mlp.{i}.weight", f"mlp.{i}.bias")
        for i, layer in enumerate(model.mlp)
        if isinstance(layer, torch.nn.Linear)
    ]

    def rate(name: str, cols: slice | None = None) -> float | Tensor:
        if not isinstance(lr, Mapping):
            return lr
        return lr[name] if cols is None else lr[name][..., cols]

    w0 = linears[0][0]
    ucols, cols = slice(None, width), slice(width, None)
    w_user, w_items = params[w0][..., ucols], params[w0][..., cols]  # (T, H, E_u), (T, H, E_i)
    weights = [params[w] for w, _ in linears[1:]]  # (T, H_out, H_in)
    biases = [params[b] for _, b in linears]  # (T, H)
    m = support.mask.to(items.dtype)  # (T, N)
    coef = 2 * m / m.sum(-1, keepdim=True).clamp(min=1.0)  # d loss / d pred per residual

    def forward() -> tuple[list[Tensor], Tensor]:
        """Pre-activations of the hidden layers [(T, N, H)] and predictions (T, N)."""
        first = torch.baddbmm(biases[0].unsqueeze(-1), w_user, user.unsqueeze(-1))  # (T, H, 1)
        pre = [torch.baddbmm(first.mT, items, w_items.mT)]  # (T, N, H)
        for w, b in zip(weights, biases[1:], strict=True):
            pre.append(torch.baddbmm(b.unsqueeze(-2), pre[-1].relu(), w.mT))
        return pre[:-1], pre[-1].squeeze(-1)

    losses = []
    for _ in range(steps):
        pre, pred = forward()
        residual = pred - support.ratings  # (T, N)
        losses.append((residual * residual * m).sum(-1) / m.sum(-1).clamp(min=1.0))
        grad = (residual * coef).unsqueeze(-1)  # (T, N, H_out): d loss / d pre-activation
        w_grads, b_grads = [], []
        for w, a in zip(reversed(weights), reversed(pre), strict=True):
            h = a.relu()  # (T, N, H_in)
            w_grads.append(grad.mT @ h)  # (T, H_out, H_in)
            b_grads.append(grad.sum(-2))  # (T, H_out)
            grad = (grad @ w) * (a > 0)  # (T, N, H_in)
        g_bias = grad.sum(-2)  # (T, H)
        g_items = grad.mT @ items  # (T, H, E_i)
        g_user = g_bias.unsqueeze(-1) * user.unsqueeze(-2)  # (T, H, E_u)
        grads = [g_user, g_items, *reversed(w_grads), g_bias, *reversed(b_grads)]
        if first_order:
            grads = [g.detach() for g in grads]
        g_user, g_items, *rest = grads
        w_user = w_user - rate(w0, ucols) * g_user
        w_items = w_items - rate(w0, cols) * g_items
        weights = [
            w - rate(name) * g for (name, _), w, g in zip(linears[1:], weights, rest, strict=False)
        ]
        biases = [
            b - rate(name) * g
            for (_, name), b, g in zip(linears, biases, rest[len(weights) :], strict=True)
        ]
    _, pred = forward()
    residual = pred - support.ratings
    losses.append((residual * residual * m).sum(-1) / m.sum(-1).clamp(min=1.0))
    adapted = {k: v for k, v in params.items()}
    adapted[w0] = torch.cat([w_user, w_items], dim=-1)
    adapted.update({w: x for (w, _), x in zip(linears[1:], weights, strict=True)})
    adapted.update({b: x for (_, b), x in zip(linears, biases, strict=True)})
    return adapted, torch.stack(losses, dim=-1)


def batchable(model: PreferenceEstimator, inputs: Inputs, fast: Sequence[str]) -> bool:
    """Whether tasks can adapt together with per-task (T, ...) MLP weights, without vmap.

    True for embedded (T, N, E) or ``Embedded`` rows when every fast parameter is an MLP
    weight or bias (the model's ``linear`` then runs one batched matmul per layer).
    """
    embedded = isinstance(inputs, Embedded) or (isinstance(inputs, Tensor) and inputs.dim() == 3)
    return embedded and all(name.startswith("mlp.") for name in fast)


def precompute(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    examples: Examples,
    fast: Sequence[str],
) -> Examples:
    """Embed the rows once when no embedding adapts (the inner loop then runs the MLP only).

    ``examples`` must have a leading task dim (T, N): the rows come back in the factored
    ``Embedded`` form (user part once per task), which the MLP evaluates at a third of the
    first layer's cost. Identical predictions (up to float rounding) to the plain form.
    """
    if not isinstance(examples.inputs, dict) or not embeds_are_shared(model, fast):
        return examples
    return examples._replace(inputs=embed_factored(model, params, examples.inputs))


def task_query_loss(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query: Examples,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool,
    fast: Sequence[str],
) -> tuple[Tensor, Tensor]:
    """One task: adapt on the support, return (query loss (), inner losses (steps + 1,))."""
    adapted, inner = adapt(
        model, params, support, steps=steps, lr=lr, first_order=first_order, fast=fast
    )
    query_loss = masked_mse(apply(model, adapted, query.inputs), query.ratings, query.mask)
    return query_loss, inner


def meta_loss(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query: Examples,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    first_order: bool = False,
    fast: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean post-adaptation query loss over a meta-batch, tasks batched (or ``vmap``).

    ``support`` / ``query`` have a leading task dimension T. Returns (loss (), per-task
    query losses (T,), inner losses (T, steps + 1)). Differentiable w.r.t. ``params`` (and a
    tensor ``lr``) to second order unless ``first_order``.
    """
    names = list(fast) if fast is not None else model.fast_names()
    support = precompute(model, params, support, names)
    query = precompute(model, params, query, names)
    if batchable(model, support.inputs, names):
        # no vmap: each task gets its own (T, ...) view of the fast MLP parameters and the
        # tasks adapt together (see ``adapt``); the meta-gradient sums back over the views.
        tasks = support.ratings.shape[0]
        per_task_params = {
            k: v.expand(tasks, *v.shape) if k in names else v for k, v in params.items()
        }
        adapted, inner = adapt(
            model, per_task_params, support, steps=steps, lr=lr, first_order=first_order, fast=names
        )
        per_task = masked_mse(apply(model, adapted, query.inputs), query.ratings, query.mask)
        return per_task.mean(), per_task, inner

    def one(s: Examples, q: Examples) -> tuple[Tensor, Tensor]:
        return task_query_loss(
            model, params, s, q, steps=steps, lr=lr, first_order=first_order, fast=names
        )

    per_task, inner = vmap(one, randomness="error")(support, query)
    return per_task.mean(), per_task, inner


def adapted_predictions(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query_inputs: Inputs,
    *,
    steps: int,
    lr: float | Mapping[str, Tensor],
    fast: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """Adapt each task of a batch (first order, no meta-gradient) and predict its queries.

    ``support`` has a leading task dim T; ``query_inputs`` features (T, Q, ...) or
    embeddings (T, Q, E). Returns (predictions (T, Q), inner losses (T, steps + 1)). Run it
    under ``torch.no_grad()`` for evaluation; ``steps=0`` predicts with ``params`` as is.
    """
    names = list(fast) if fast is not None else model.fast_names()
    support = precompute(model, params, support, names)
    if isinstance(query_inputs, dict) and embeds_are_shared(model, names):
        query_inputs = embed_factored(model, params, query_inputs)

    def one(s: Examples, q_inputs: Inputs) -> tuple[Tensor, Tensor]:
        adapted, inner = adapt(model, params, s, steps=steps, lr=lr, first_order=True, fast=names)
        return apply(model, adapted, q_inputs), inner

    return vmap(one, randomness="error")(support, query_inputs)


def trim(examples: Examples) -> Examples:
    """Drop the trailing slots that are padding in every task: (T, N) → (T, n ≤ N).

    Real rows are packed first in each task, so this only removes work, never data.
    """
    used = examples.mask.any(0)
    n = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    if n == examples.mask.shape[-1]:
        return examples
    inputs: Inputs
    if isinstance(examples.inputs, Tensor):
        inputs = examples.inputs[:, :n]
    elif isinstance(examples.inputs, Embedded):
        inputs = Embedded(examples.inputs.user, examples.inputs.items[:, :n])
    else:
        inputs = {k: v[:, :n] for k, v in examples.inputs.items()}
    return Examples(inputs, examples.ratings[:, :n], examples.mask[:, :n])


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
