"""The batched inner-loop gradient: T tasks' support-MSE gradients at once, MLP by hand.

``adapt(..., kernel="batched")`` runs ``batched_step``'s function once per inner step. The fast
parameters carry a leading task dim T; the support rows are (T, N). The MLP's gradient is
back-propagated by hand from the residual coefficients (d loss / d prediction) through the
Linear/ReLU stack in a few batched matmuls per layer, so the meta-gradient is autograd
through ~20 ops per step instead of through ``torch.func.grad``'s graph. Any other fast
parameter (an adapted embedding, an additive part of the model) gets its gradient by
autograd: the vjp of the task's prediction w.r.t. that parameter with the same residual
cotangent — so a new model part joins adaptation without touching the hand-derived code.
tests/test_maml.py pins this kernel to the generic ``torch.func`` path in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vjp, vmap

from melu.features import FeatureBatch
from melu.model.estimator import Encoded, Params, PreferenceEstimator

_Getter = Callable[[str], Tensor]  # MLP parameter name → its (T, ...) view
Step = Callable[[Params], tuple[Params, Tensor]]  # fast params → (gradients, losses)


def per_task_dims(params: Mapping[str, Tensor], batched: Sequence[str]) -> dict[str, int | None]:
    """``vmap`` in_dims of a params dict whose ``batched`` entries have a leading task dim."""
    return {k: 0 if k in batched else None for k in params}


def broadcasts(model: PreferenceEstimator, batched: Sequence[str]) -> bool:
    """Whether per-task (T, ...) values of ``batched`` broadcast through ``score`` as they
    are (MLP weights and the model's ``user_params`` do; looked-up tables do not)."""
    return all(k.startswith("mlp.") or k in model.user_params for k in batched)


def task_predictions(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    features: FeatureBatch,
    batched: Sequence[str],
) -> Tensor:
    """Predictions (T, N) of T tasks' rows (T, N) whose ``batched`` params are (T, ...).

    Per-task MLP or user parameters: one broadcasting ``predict``; per-task tables
    (embeddings, item tables): ``vmap``.
    """
    if broadcasts(model, batched):
        return model.predict(params, features)
    dims = per_task_dims(params, batched)
    return vmap(model.predict, in_dims=(dims, 0))(dict(params), features)


def batched_step(
    model: PreferenceEstimator,
    frozen: Mapping[str, Tensor],
    rows: Encoded | FeatureBatch,
    ratings: Tensor,
    mask: Tensor,
) -> Step:
    """The inner step's gradient function for T tasks at once.

    ``frozen``: the shared (not adapted) parameters. ``rows``: the support encoded once
    (``Encoded`` (T, E_u), (T, N, E_i)) when no embedding adapts, else features
    (T, N, ...). ``ratings``, ``mask`` (T, N). The returned function maps the fast
    parameters, each per task (T, ...), to (their gradients of each task's masked support
    MSE, losses (T,)); differentiable (second order) like the generic path.
    """
    m = mask.to(ratings.dtype)  # (T, N)
    # (T, 1) real rows per task (+ the inner loss's prior λ, see ``masked_mse``)
    count = (m.sum(-1, keepdim=True) + model.config.support_prior).clamp(min=1.0)
    coef = 2 * m / count  # d loss / d pred per residual
    tasks = ratings.shape[0]

    cache: dict[str, tuple[list[Tensor], Tensor]] = {}  # the frozen MLP's output, once

    def step(fast_params: Params) -> tuple[Params, Tensor]:
        params, fast = {**frozen, **fast_params}, list(fast_params)
        encoded = rows if isinstance(rows, Encoded) else _encode_tasks(model, params, rows, fast)

        def mlp(name: str) -> Tensor:  # (T, ...) view of an MLP parameter
            p = params[name]
            return p if name in fast_params else p.expand(tasks, *p.shape)

        adapts_mlp = any(k.startswith("mlp.") for k in fast)
        if adapts_mlp or "mlp" not in cache:  # the MLP is constant while only others adapt
            cache["mlp"] = _forward(model, mlp, encoded)
        pre, pred = cache["mlp"]
        in_parts = [k for k in fast if k in model.user_params]
        leaves: Params = {}
        if in_parts and isinstance(rows, Encoded) and broadcasts(model, fast):
            # the parts' per-task parameters broadcast: one backward pass for all T tasks,
            # whose cotangent per task gives each task its own gradient (plain autograd:
            # a third of the cost of a functorch vjp at serving sizes)
            outer = torch.is_grad_enabled()  # False under no_grad: no graph to extend
            with torch.enable_grad():
                leaves = {k: _leaf(params[k], outer) for k in in_parts}
                part_pred = _parts(model, params, encoded, leaves)
            pred = pred + part_pred
        else:
            dims = per_task_dims(params, fast)
            for part in model.parts:  # written for one task: vmapped over the T tasks
                pred = pred + vmap(part, in_dims=(dims, 0))(params, encoded)
        residual = pred - ratings  # (T, N)
        losses = (residual * residual * m).sum(-1) / count.squeeze(-1)
        cotangent = residual * coef  # (T, N): d loss / d pred
        grads = _mlp_backward(model, mlp, encoded, pre, cotangent) if adapts_mlp else {}
        if leaves:
            graph = outer and any(p.requires_grad for p in fast_params.values())
            with torch.enable_grad():
                found = torch.autograd.grad(
                    part_pred, list(leaves.values()), cotangent, create_graph=graph
                )
            grads.update(zip(leaves, found, strict=True))
        out = {k: grads[k] for k in fast if k in grads}
        others = [k for k in fast if k not in grads]
        if others:
            out.update(_autograd_gradients(model, params, rows, cotangent, fast, others))
        return out, losses

    return step


def _leaf(value: Tensor, outer: bool) -> Tensor:
    """``value`` itself when it is in the outer graph (training with grad enabled), else a
    fresh leaf autograd can differentiate (adaptation under ``no_grad``: serving, evaluation)."""
    return value if outer and value.requires_grad else value.detach().requires_grad_()


def _parts(
    model: PreferenceEstimator, params: Mapping[str, Tensor], encoded: Encoded, extra: Params
) -> Tensor:
    """The additive parts' prediction (T, N) with ``extra`` parameters swapped in."""
    full = {**params, **extra}
    out = torch.zeros_like(encoded.ids, dtype=encoded.items.dtype)
    for part in model.parts:
        out = out + part(full, encoded)
    return out


def _encode_tasks(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    features: FeatureBatch,
    fast: Sequence[str],
) -> Encoded:
    """Encode (T, N) rows with per-task embedding tables (T, V, D) where they adapt."""
    dims = per_task_dims(params, fast)
    return vmap(model.encode, in_dims=(dims, 0))(dict(params), features)


def _forward(
    model: PreferenceEstimator, mlp: _Getter, encoded: Encoded
) -> tuple[list[Tensor], Tensor]:
    """Pre-activations of the hidden layers [(T, N, H)] and the MLP's predictions (T, N)."""
    (w0, b0), *rest = model.linears
    width = model.user_width
    weight = mlp(w0)  # (T, H, W)
    user = encoded.user.unsqueeze(-1)  # (T, E_u, 1)
    first = torch.baddbmm(mlp(b0).unsqueeze(-1), weight[..., :width], user)  # (T, H, 1)
    pre = [torch.baddbmm(first.mT, encoded.items, weight[..., width:].mT)]  # (T, N, H)
    for w, b in rest:
        pre.append(torch.baddbmm(mlp(b).unsqueeze(-2), pre[-1].relu(), mlp(w).mT))
    return pre[:-1], pre[-1].squeeze(-1)


def _mlp_backward(
    model: PreferenceEstimator, mlp: _Getter, encoded: Encoded, pre: list[Tensor], cotangent: Tensor
) -> Params:
    """Hand-derived d loss / d (every MLP parameter), each (T, ...), from d loss / d pred."""
    grads: Params = {}
    grad = cotangent.unsqueeze(-1)  # (T, N, H_out): d loss / d pre-activation
    for (w, b), a in zip(reversed(model.linears[1:]), reversed(pre), strict=True):
        h = a.relu()  # (T, N, H_in)
        grads[w] = grad.mT @ h  # (T, H_out, H_in)
        grads[b] = grad.sum(-2)  # (T, H_out)
        grad = (grad @ mlp(w)) * (a > 0)  # (T, N, H_in)
    w0, b0 = model.linears[0]
    grads[b0] = grad.sum(-2)  # (T, H)
    g_user = grads[b0].unsqueeze(-1) * encoded.user.unsqueeze(-2)  # (T, H, E_u)
    grads[w0] = torch.cat([g_user, grad.mT @ encoded.items], dim=-1)  # (T, H, W)
    return grads


def _autograd_gradients(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    rows: Encoded | FeatureBatch,
    cotangent: Tensor,
    fast: Sequence[str],
    names: Sequence[str],
) -> Params:
    """d loss / d ``names`` per task: the vjp of the prediction with the residual cotangent."""

    def one(p: Params, x: Encoded | FeatureBatch, cot: Tensor) -> Params:
        frozen = {k: v for k, v in p.items() if k not in names}

        def prediction(extra: Params) -> Tensor:
            full = {**frozen, **extra}
            return model.score(full, x) if isinstance(x, Encoded) else model.predict(full, x)

        pull = vjp(prediction, {k: p[k] for k in names})[1]
        grads: Params = pull(cot)[0]
        return grads

    dims = per_task_dims(params, fast)
    out: Params = vmap(one, in_dims=(dims, 0, 0))(dict(params), rows, cotangent)
    return out
