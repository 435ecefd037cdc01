"""MAML on the pure preference estimator: the one ``adapt()`` and ``meta_loss()``.

``adapt`` is the only inner loop in melu: training, evaluation, baselines, onboarding and
the service all call it. It differentiates the masked support MSE and returns *new*
parameters (a dict update), so the meta-gradient flows through every inner step (second
order) unless ``first_order=True`` cuts it at the inner gradients (FOMAML). This is the fix
to the original MeLU, whose ``load_state_dict`` fast weights silently cut the graph.

How each step's gradient is computed is the caller's explicit ``kernel`` choice:
``"generic"`` — one task, ``torch.func.grad`` (the reference; batch it with ``vmap``);
``"batched"`` — T tasks at once with per-task fast parameters, the MLP's gradient written
out by hand (``melu.model.kernel``; MeLU's recipe, where exactly the MLP adapts, moves its
first layer in row space: ``melu.model.kernel_mlp``); ``"linear"`` — T tasks at once when
only the user's bias and factor adapt, their gradient in closed form (``melu.model.linear``).
tests/test_maml.py pins them to each other (float64)
and the meta-gradient to finite differences. The defaults (5 steps at lr 0.05 on the MLP)
and why they differ from MeLU's are in RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from melu.config import MetaConfig
from melu.features import FeatureBatch
from melu.model.estimator import Encoded, Params, PreferenceEstimator, is_embedding
from melu.model.examples import Examples, task_examples, trim
from melu.model.kernel import Step, batched_step, broadcasts, per_task_dims, task_predictions
from melu.model.kernel_mlp import adapts_whole_mlp, encode_and_adapt
from melu.model.linear import (
    AffineExamples,
    affine,
    affine_predict,
    linear_applies,
    linear_step,
)

Kernel = Literal["generic", "batched", "linear"]
Lr = float | Mapping[str, Tensor]  # one rate, or per-parameter rates (Meta-SGD)
# Examples, task_examples and trim live in melu.model.examples; callers import them here too
__all__ = ["Examples", "Kernel", "Lr", "adapt", "inner_rates", "masked_mse", "meta_loss",
           "task_examples", "task_query_loss", "trim"]  # fmt: skip


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, prior: float = 0.0) -> Tensor:
    """Σ over real rows of (pred - target)², over (n + ``prior``): (…,) for (…, N) inputs.

    ``prior`` 0 is the mean squared error (0 if no real rows). The inner loss uses the
    model's ``support_prior`` λ: a gradient step from the initialisation then moves a
    user's offset by Σ residual / (n + λ), the shrunk mean of the baseline predictor."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum(-1) / (m.sum(-1) + prior).clamp(min=1.0)


def inner_rates(meta: MetaConfig, learned: Mapping[str, Tensor] | None) -> Lr:
    """The inner learning rate(s) to adapt with: the learned Meta-SGD rates when there are
    any (``learned``: fast name → tensor of that parameter's shape), else ``meta.inner_lr``."""
    return dict(learned) if learned else meta.inner_lr


def adapt(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples | AffineExamples,
    *,
    steps: int,
    lr: Lr,
    first_order: bool = False,
    fast: Sequence[str] | None = None,
    kernel: Kernel = "generic",
    anchor_at: Mapping[str, Tensor] | None = None,
) -> tuple[Params, Tensor]:
    """Adapt ``params`` to support sets by ``steps`` of gradient descent on the masked MSE.

    Only the ``fast`` parameters (default: the model's configured group) change; ``lr`` is
    a float or a per-parameter tensor dict (Meta-SGD). When no embedding adapts, the
    support is encoded once, before the loop. ``kernel="generic"``: ``support`` is one task
    (N,); returns the adapted params and the support loss before each step and after the
    last (steps + 1,). ``kernel="batched"``: ``support`` is T tasks (T, N); the fast
    params come back per task (T, ...) (shared or per-task ones go in), losses
    (T, steps + 1). ``kernel="linear"`` likewise, for fast groups ``linear_applies`` to;
    its ``support`` may come in affine form already (``AffineExamples``). ``anchor_at``:
    where the inner loss's ridge term pulls the model's anchored parameters (default: their
    values in ``params``; a caller continuing an adaptation in several calls passes the
    values it started from). Never mutates ``params``.
    """
    names = list(fast) if fast is not None else model.fast_names()
    batched = kernel == "batched" and isinstance(support, Examples)
    if batched and isinstance(support, Examples) and adapts_whole_mlp(model, names, lr):
        assert not isinstance(lr, Mapping)  # adapts_whole_mlp: one rate
        state, inner, _ = encode_and_adapt(model, params, *support, steps, lr, first_order)
        whole = state.params()
        return {k: whole.get(k, v) for k, v in params.items()}, inner
    frozen = {k: v for k, v in params.items() if k not in names}
    fast_params = {k: params[k] for k in names}
    if kernel != "generic":
        shapes, tasks = model.shapes(), support.mask.shape[0]
        fast_params = {k: v.expand(tasks, *shapes[k]) for k, v in fast_params.items()}
    step, rows = _kernel_step(model, params, frozen, names, support, kernel)
    start = {k: (anchor_at or fast_params)[k] for k in fast_params}
    anchor = _Anchor(model, start, support.mask)
    losses = []
    for _ in range(steps):
        grads, loss = anchor(*step(fast_params), fast_params)
        if first_order and torch.is_grad_enabled():  # no graph to cut under no_grad
            grads = {k: g.detach() for k, g in grads.items()}
        fast_params = {
            k: p - (lr[k] if isinstance(lr, Mapping) else lr) * grads[k]
            for k, p in fast_params.items()
        }
        losses.append(loss)
    adapted = {**frozen, **fast_params}
    if rows is None:  # linear: the support loss at the adapted offsets, no network re-run
        loss = step(fast_params)[1]
    else:
        pred = _predict(model, adapted, rows, names if kernel == "batched" else ())
        loss = masked_mse(pred, support.ratings, support.mask, model.config.support_prior)
    losses.append(loss + anchor.penalty(fast_params))
    return {k: adapted[k] for k in params}, torch.stack(losses, dim=-1)


def _kernel_step(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    frozen: Params,
    names: Sequence[str],
    support: Examples | AffineExamples,
    kernel: Kernel,
) -> tuple[Step, Encoded | FeatureBatch | None]:
    """``kernel``'s step function on ``support`` and the rows it predicts (encoded once
    when no embedding adapts; None for the linear kernel, which needs no rows after)."""
    if kernel == "linear":
        if not linear_applies(model, names):
            raise ValueError(f"kernel='linear' needs fast params within the user offsets: {names}")
        if isinstance(support, AffineExamples):
            form = support.rows
        else:
            form = affine(model, params, model.encode(params, support.inputs))
        return linear_step(model, frozen, form, support.ratings, support.mask), None
    if isinstance(support, AffineExamples):
        raise ValueError(f"kernel={kernel!r} needs features, not rows in affine form")
    rows: Encoded | FeatureBatch = support.inputs
    if not any(is_embedding(k) for k in names):
        rows = model.encode(params, support.inputs)
    if kernel == "batched":
        return batched_step(model, frozen, rows, support.ratings, support.mask), rows
    return _generic_step(model, frozen, rows, support), rows


class _Anchor:
    """The ridge term of the inner loss, λ·Σ‖θ − θ₀‖² / (n + λ), on the model's ``anchored``
    fast parameters (θ₀: their values when adaptation starts, the meta-learned prior):
    gradient descent then heads for the ridge solution around the prior instead of drifting
    away from it on a small support. Added to both kernels' gradients and losses alike."""

    def __init__(self, model: PreferenceEstimator, start: Params, mask: Tensor) -> None:
        lam = model.config.support_prior
        self.start = {k: v for k, v in start.items() if k in model.anchored and lam > 0}
        self.lam = lam
        self.count = (mask.to(torch.get_default_dtype()).sum(-1) + lam).clamp(min=1.0)  # (…)
        self._scales: dict[tuple[int, torch.dtype], Tensor] = {}

    def _scale(self, value: Tensor) -> Tensor:
        """λ / (n + λ) shaped to broadcast against a (…, *param) tensor (cached)."""
        key = (value.dim(), value.dtype)
        if key not in self._scales:
            shape = (*self.count.shape, *([1] * (value.dim() - self.count.dim())))
            self._scales[key] = self.lam / self.count.reshape(shape).to(value.dtype)
        return self._scales[key]

    def _terms(self, fast: Params) -> tuple[Params, Tensor | float]:
        """The ridge term's gradients and its value, from one θ − θ₀ per parameter."""
        grads: Params = {}
        value: Tensor | float = 0.0
        for k, p0 in self.start.items():
            d = fast[k] - p0
            scaled = self._scale(d) * d
            grads[k] = 2 * scaled
            value = value + (scaled * d).flatten(self.count.dim()).sum(-1)
        return grads, value

    def penalty(self, fast: Params) -> Tensor | float:
        return self._terms(fast)[1] if self.start else 0.0

    def __call__(self, grads: Params, loss: Tensor, fast: Params) -> tuple[Params, Tensor]:
        if not self.start or all(fast[k] is p0 for k, p0 in self.start.items()):
            return grads, loss  # no term (or θ is θ₀ itself, the first step: it is 0)
        extra, value = self._terms(fast)
        return {k: g + extra[k] if k in extra else g for k, g in grads.items()}, loss + value


def _predict(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    rows: Encoded | FeatureBatch,
    batched: Sequence[str],
) -> Tensor:
    """Predictions of encoded rows or of features; ``batched`` params are per task."""
    if isinstance(rows, Encoded):
        if broadcasts(model, batched):
            return model.score(params, rows)
        return vmap(model.score, in_dims=(per_task_dims(params, batched), 0))(dict(params), rows)
    return task_predictions(model, params, rows, batched)


def _generic_step(
    model: PreferenceEstimator, frozen: Params, rows: Encoded | FeatureBatch, support: Examples
) -> Step:
    """One task's gradient step by ``torch.func.grad`` of the support MSE."""

    def support_loss(fp: Params) -> tuple[Tensor, Tensor]:
        loss = masked_mse(
            _predict(model, {**frozen, **fp}, rows, ()),
            support.ratings,
            support.mask,
            model.config.support_prior,
        )
        return loss, loss

    grad_step = grad_and_value(support_loss, has_aux=True)

    def step(fp: Params) -> tuple[Params, Tensor]:
        grads, (_, loss) = grad_step(fp)
        return grads, loss

    return step


def task_query_loss(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples,
    query: Examples,
    *,
    steps: int,
    lr: Lr,
    first_order: bool,
    fast: Sequence[str],
) -> tuple[Tensor, Tensor]:
    """One task (generic kernel): adapt on the support, return (query loss (), inner
    losses (steps + 1,))."""
    adapted, inner = adapt(
        model, params, support, steps=steps, lr=lr, first_order=first_order, fast=fast
    )
    query_loss = masked_mse(model.predict(adapted, query.inputs), query.ratings, query.mask)
    return query_loss, inner


def meta_loss(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: Examples | AffineExamples,
    query: Examples | AffineExamples,
    *,
    steps: int,
    lr: Lr,
    first_order: bool = False,
    fast: Sequence[str] | None = None,
    kernel: Kernel = "batched",
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean post-adaptation query loss over a meta-batch of T tasks.

    ``support`` / ``query`` have a leading task dim T (padded rows masked). ``kernel``:
    ``"batched"`` adapts the tasks together (``melu.model.kernel``); ``"generic"`` runs
    ``task_query_loss`` under ``vmap``; ``"linear"`` adapts the user offsets in closed form
    (``melu.model.linear``; support and query may come in affine form). Returns (loss (), per-task query losses (T,), inner
    losses (T, steps + 1)). Differentiable w.r.t. ``params`` (and a tensor ``lr``) to
    second order unless ``first_order``.
    """
    names = list(fast) if fast is not None else model.fast_names()
    rows_in = isinstance(support, Examples) and isinstance(query, Examples)
    if kernel == "batched" and rows_in and adapts_whole_mlp(model, names, lr):  # row space
        assert isinstance(support, Examples) and isinstance(query, Examples)  # as checked
        assert not isinstance(lr, Mapping)  # adapts_whole_mlp: one rate
        state, inner, rows = encode_and_adapt(
            model, params, *support, steps, lr, first_order, query.inputs
        )
        pred = state.predict(rows)
        per_task = masked_mse(pred, query.ratings, query.mask)
        return per_task.mean(), per_task, inner
    if kernel != "generic":
        adapted, inner = adapt(
            model, params, support, steps=steps, lr=lr, first_order=first_order, fast=names,
            kernel=kernel,
        )  # fmt: skip
        if isinstance(query, AffineExamples):
            pred = affine_predict(adapted, query.rows)
        else:
            pred = task_predictions(model, adapted, query.inputs, names)
        per_task = masked_mse(pred, query.ratings, query.mask)
        return per_task.mean(), per_task, inner
    if isinstance(support, AffineExamples) or isinstance(query, AffineExamples):
        raise ValueError("kernel='generic' needs features, not rows in affine form")

    def one(s: Examples, q: Examples) -> tuple[Tensor, Tensor]:
        return task_query_loss(
            model, params, s, q, steps=steps, lr=lr, first_order=first_order, fast=names
        )

    per_task, inner = vmap(one, randomness="error")(support, query)
    return per_task.mean(), per_task, inner
