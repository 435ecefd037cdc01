"""MeLU's recipe in the batched kernel: the whole MLP adapts, its first layer in row space.

When exactly the MLP adapts (``fast_params="mlp"``, no additive parts, one learning rate),
the first layer's per-task weight W₀ = [W₀ᵤ W₀ᵢ] (T, H, E_u + E_i) never needs to exist
inside the inner loop. Its gradient is gᵤ = γ ⊗ u and gᵢ = Gᵀ X, with G (T, N, H) the
gradient at the first pre-activations, γ = Σₙ G its row sum, u (T, E_u) the user's and
X (T, N, E_i) the support rows' embeddings. So one SGD step moves the first pre-activations
by exact identities:

    user share   a = W₀ᵤ u + b₀   →  a − lr · γ · (1 + u·u)
    item share   P = X W₀ᵢᵀ       →  P − lr · (X Xᵀ) G

with the Gram matrix X Xᵀ (T, N, N) formed once; as a's move γ (1 + u·u) = (1 + u·u) 1ᵀ G is
the same for all N rows, both shares move by one matmul, −lr (X Xᵀ + (1 + u·u) 1 1ᵀ) G.
That is N²·H multiply-adds per step instead of 2·N·E_i·H for the forward matmul and the
weight gradient (N ≤ 90 < E_i = 96 at MeLU's sizes), in the inner loop and in the meta-gradient through it. The adapted W₀ is
built once at the end from the summed G: W₀ − lr · [Σγ ⊗ u, (ΣG)ᵀ X]. Same math as
``kernel.batched_step`` + SGD (first order: the factors the gradient brings in are
detached, as FOMAML detaches the gradient); tests/test_maml.py pins the two to each other.
In second order the loop runs as one autograd node whose reverse is written out by hand
(``melu.model.kernel_unroll``, pinned to autograd of the same loop by
tests/test_kernel_unroll.py); first order keeps the loop below, differentiated by autograd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from melu.features import FeatureBatch
from melu.model.estimator import Encoded, Params, PreferenceEstimator
from melu.model.kernel_unroll import unrolled


def adapts_whole_mlp(model: PreferenceEstimator, fast: Sequence[str], lr: object) -> bool:
    """Whether ``mlp_adapt`` applies: the fast group is exactly the MLP's parameters (so no
    embedding adapts), the model has no additive parts and ``lr`` is one rate (a
    per-parameter Meta-SGD rate on W₀ breaks the identities)."""
    mlp = {name for pair in model.linears for name in pair}
    return set(fast) == mlp and not model.parts and isinstance(lr, int | float)


class RowSpace(NamedTuple):
    """T tasks' MLP after ``mlp_adapt``: the adapted later layers and the first layer's
    move in row space (its W₀ is built only when asked for, by ``params``)."""

    model: PreferenceEstimator
    start: Mapping[str, Tensor]  # the MLP parameters adaptation started from
    later: Params  # the adapted layers after the first, each (T, ...)
    moved: Tensor | None  # ΣG (T, N, H) over the steps (None: no step)
    user: Tensor  # (T, E_u) the support's user embeddings, as the gradient saw them
    items: Tensor  # (T, N, E_i) the support rows' embeddings, as the gradient saw them
    lr: float

    def first(self, encoded: Encoded) -> Tensor:
        """The adapted first layer's pre-activations (T, Q, H) of rows ``encoded``
        (user (T, E_u), items (T, Q, E_i)) of the same T tasks."""
        (w0, b0), width = self.model.linears[0], self.model.user_width
        weight = self.start[w0]  # (…, H, W)
        user = (encoded.user.unsqueeze(-2) @ weight[..., :width].mT) + self.start[b0].unsqueeze(-2)
        out = encoded.items @ weight[..., width:].mT + user  # (T, Q, H)
        if self.moved is None:
            return out
        spread = 1 + (encoded.user * self.user).sum(-1, keepdim=True)  # (T, 1)
        out = torch.add(out, (self.moved.sum(-2) * spread).unsqueeze(-2), alpha=-self.lr)
        return torch.baddbmm(out, encoded.items @ self.items.mT, self.moved, alpha=-self.lr)

    def predict(self, encoded: Encoded) -> Tensor:
        """The adapted MLP's predictions (T, Q) of rows ``encoded`` of the same T tasks."""
        return _forward(self.model, self.later, self.first(encoded))[0][-1].squeeze(-1)

    def params(self) -> Params:
        """The adapted MLP parameters, each (T, ...): W₀ − lr · [Σγ ⊗ u, (ΣG)ᵀ X], …"""
        (w0, b0), shapes, tasks = self.model.linears[0], self.model.shapes(), self.user.shape[0]
        out = {k: _per_task(v, shapes[k], tasks) for k, v in self.later.items()}
        weight, bias = self.start[w0], self.start[b0]
        if self.moved is None:
            return {
                **out,
                w0: _per_task(weight, shapes[w0], tasks),
                b0: _per_task(bias, shapes[b0], tasks),
            }
        g_sum = self.moved.sum(-2)  # (T, H)
        g_user = g_sum.unsqueeze(-1) * self.user.unsqueeze(-2)  # (T, H, E_u)
        g_weight = torch.cat([g_user, self.moved.mT @ self.items], dim=-1)  # (T, H, W)
        return {**out, w0: weight - self.lr * g_weight, b0: bias - self.lr * g_sum}


def mlp_adapt(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    encoded: Encoded,
    ratings: Tensor,
    mask: Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
) -> tuple[RowSpace, Tensor]:
    """``steps`` SGD steps on T tasks' masked support MSE, every MLP parameter per task.

    ``encoded``: user (T, E_u), items (T, N, E_i); ``ratings``, ``mask`` (T, N). The MLP
    parameters in ``params`` are shared ((H, W), …) or already per task ((T, H, W), …).
    Returns the adapted MLP (``RowSpace``: its ``params()``, or ``predict`` of the tasks'
    other rows) and the support losses before each step and after the last
    (T, steps + 1). Differentiable to second order unless ``first_order``.
    """
    m = mask.to(ratings.dtype)
    count = (m.sum(-1) + model.config.support_prior).clamp(min=1.0)  # (T,)
    coef = (2 * m / count.unsqueeze(-1)).unsqueeze(-1)  # (T, N, 1): d loss / d pred
    fixed = Encoded(
        *(encoded.user.detach(), encoded.items.detach()) if first_order else encoded[:2],
        encoded.ids,
    )  # the factors a gradient brings in (FOMAML: detached with it)
    spread = 1 + (encoded.user * fixed.user).sum(-1, keepdim=True)  # (T, 1)
    # X Xᵀ + (1 + u·u) 1 1ᵀ (T, N, N): one step's move of both shares, P and a, in one matmul
    gram = _gram(encoded.items, fixed.items) + spread.unsqueeze(-1)
    mlp = {k: params[k] for pair in model.linears for k in pair}
    state = RowSpace(model, mlp, {k: mlp[k] for pair in model.linears[1:] for k in pair},
                     None, fixed.user, fixed.items, lr)  # fmt: skip
    first = state.first(encoded)  # (T, N, H): the first layer's pre-activations
    if not first_order and steps > 0 and not torch.is_autocast_enabled():
        # second order: the loop as one autograd node, its reverse by hand (kernel_unroll)
        state, r = _unrolled(state, first, gram, ratings, coef, steps)
        return state, (r * r * m.unsqueeze(-1)).sum(-2) / count.unsqueeze(-1)
    residuals = []
    for step in range(steps + 1):
        pre, hidden = _forward(model, state.later, first)
        residual = pre[-1].squeeze(-1) - ratings  # (T, N)
        residuals.append(residual)
        if step == steps:
            break
        cotangent = residual.unsqueeze(-1) * coef
        grads, g = _backward(model, state.later, pre[:-1], hidden, cotangent)
        if first_order:
            grads, g = {k: v.detach() for k, v in grads.items()}, g.detach()
        later = {k: torch.add(v, grads[k], alpha=-lr) for k, v in state.later.items()}
        first = torch.baddbmm(first, gram, g, alpha=-lr)
        state = state._replace(later=later, moved=g if state.moved is None else state.moved + g)
    r = torch.stack(residuals, dim=-1)  # (T, N, steps + 1): every step's losses in one go
    return state, (r * r * m.unsqueeze(-1)).sum(-2) / count.unsqueeze(-1)


def _unrolled(
    state: RowSpace, first: Tensor, gram: Tensor, ratings: Tensor, coef: Tensor, steps: int
) -> tuple[RowSpace, Tensor]:
    """``mlp_adapt``'s loop by ``kernel_unroll.unrolled``: the adapted state and the
    residuals (T, N, steps + 1) of every step and after the last."""
    names, tasks, shapes = state.model.linears[1:], first.shape[0], state.model.shapes()
    layers = [
        (_per_task(state.later[w], shapes[w], tasks), _per_task(state.later[b], shapes[b], tasks))
        for w, b in names
    ]
    moved, residuals, adapted = unrolled(first, gram, ratings, coef, layers, steps, state.lr)
    later = {
        k: v
        for (w, b), p in zip(names, adapted, strict=True)
        for k, v in zip((w, b), p, strict=True)
    }
    return state._replace(later=later, moved=moved), residuals


def encode_and_adapt(
    model: PreferenceEstimator,
    params: Mapping[str, Tensor],
    support: FeatureBatch,
    ratings: Tensor,
    mask: Tensor,
    steps: int,
    lr: float,
    first_order: bool,
    query: FeatureBatch | None = None,
) -> tuple[RowSpace, Tensor, Encoded]:
    """``mlp_adapt`` on T tasks' support features (T, N, ...) with their ``ratings`` and
    ``mask`` (T, N); ``query`` features (T, Q, ...) are encoded in the same embedding pass
    (and backward). Returns the adapted MLP, the inner losses and the encoded query rows
    (the support's when there is no ``query``)."""
    n, inputs = mask.shape[-1], support
    if query is not None:
        inputs = {k: torch.cat([v, query[k]], dim=1) for k, v in inputs.items()}
    rows = model.encode(params, inputs, bags=True)  # differentiated once: fused bags
    sizes = [n, rows.items.shape[1] - n]  # split, not sliced: one backward op for both
    parts = [
        Encoded(rows.user, x, i)
        for x, i in zip(rows.items.split(sizes, 1), rows.ids.split(sizes, 1), strict=True)
    ]
    state, inner = mlp_adapt(
        model, params, parts[0], ratings, mask, steps=steps, lr=lr, first_order=first_order
    )
    return state, inner, parts[1] if query is not None else parts[0]


def _forward(
    model: PreferenceEstimator, later: Params, first: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """The layers after the first, from its pre-activations ``first`` (T, N, H): every
    pre-activation (the last one the predictions (T, N, 1)) and the hidden ReLU outputs."""
    pre, hidden = [first], []
    for w, b in model.linears[1:]:
        hidden.append(pre[-1].relu())
        weight, bias = later[w], later[b].unsqueeze(-2)
        if weight.dim() == 3 and weight.shape[-2] == 1:  # per-task output: no K × 1 matmul
            pre.append((hidden[-1] * weight).sum(-1, keepdim=True) + bias)
        elif weight.dim() == 3:  # per task: the bias add fused into the batched matmul
            pre.append(torch.baddbmm(bias, hidden[-1], weight.mT))
        else:  # shared (before the first step): one matmul over all rows
            pre.append(hidden[-1] @ weight.mT + bias)
    return pre, hidden


def _backward(
    model: PreferenceEstimator,
    later: Params,
    pre: list[Tensor],
    hidden: list[Tensor],
    cotangent: Tensor,
) -> tuple[Params, Tensor]:
    """Gradients of the layers after the first ((T, ...) each) and G (T, N, H), the
    gradient at the first pre-activations, from ``cotangent`` (T, N, 1) = d loss / d pred.
    ``pre`` / ``hidden``: the hidden layers' pre-activations and ReLU outputs (T, N, H)."""
    grads: Params = {}
    grad = cotangent
    layers = zip(reversed(model.linears[1:]), reversed(pre), reversed(hidden), strict=True)
    for (w, b), a, h in layers:
        grads[b] = grad.sum(-2)  # (T, H_out)
        if grad.shape[-1] == 1:  # the output layer: outer products, not K=1 matmuls
            grads[w] = (grad * h).sum(-2, keepdim=True)  # (T, 1, H_in)
            grad = grad * later[w]  # (T, N, H_in)
        else:
            grads[w] = grad.mT @ h  # (T, H_out, H_in)
            grad = grad @ later[w]  # (T, N, H_in)
        grad = torch.ops.aten.threshold_backward(grad, a, 0)  # · (a > 0), one op
    return grads, grad


class _SymmetricGram(torch.autograd.Function):
    """X Xᵀ (T, N, N) of X (T, N, E), its backward in one matmul, (Ḡ + Ḡᵀ) X, where
    autograd's for ``x @ x.mT`` takes two and adds them (itself differentiable)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        # ctx in forward, not setup_context: apply() then skips binding the signature
        # (inspect.signature) on every call; the row-space path is never vmapped
        ctx.save_for_backward(x)
        return x @ x.mT

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return (grad + grad.mT) @ x


def _gram(items: Tensor, fixed: Tensor) -> Tensor:
    """``items`` @ ``fixed``ᵀ (T, N, N); by ``_SymmetricGram`` when the two are one tensor."""
    if fixed is items and items.requires_grad:
        return _SymmetricGram.apply(items)  # type: ignore[no-any-return]
    return items @ fixed.mT


def _per_task(value: Tensor, shape: torch.Size, tasks: int) -> Tensor:
    """``value`` of parameter shape ``shape`` with a leading task dim T (a view if shared)."""
    return value if value.dim() > len(shape) else value.expand(tasks, *shape)
