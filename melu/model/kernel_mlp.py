"""MeLU's recipe in the batched kernel: the whole MLP adapts, its first layer in row space.

When exactly the MLP adapts (``fast_params="mlp"``, no additive parts, one learning rate),
the first layer's per-task weight W₀ = [W₀ᵤ W₀ᵢ] (T, H, E_u + E_i) never needs to exist
inside the inner loop. Its gradient is gᵤ = γ ⊗ u and gᵢ = Gᵀ X, with G (T, N, H) the
gradient at the first pre-activations, γ = Σₙ G its row sum, u (T, E_u) the user's and
X (T, N, E_i) the support rows' embeddings. So one SGD step moves the first pre-activations
by exact identities:

    user share   a = W₀ᵤ u + b₀   →  a − lr · γ · (1 + u·u)
    item share   P = X W₀ᵢᵀ       →  P − lr · (X Xᵀ) G

with the Gram matrix X Xᵀ (T, N, N) formed once. That is N²·H multiply-adds per step
instead of 2·N·E_i·H for the forward matmul and the weight gradient (N ≤ 90 < E_i = 160 at
MeLU's sizes), in the inner loop and in the meta-gradient through it. The adapted W₀ is
built once at the end from the summed G: W₀ − lr · [Σγ ⊗ u, (ΣG)ᵀ X]. Same math as
``kernel.batched_step`` + SGD (first order: the factors the gradient brings in are
detached, as FOMAML detaches the gradient); tests/test_maml.py pins the two to each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from melu.model.estimator import Encoded, Params, PreferenceEstimator


def adapts_whole_mlp(
    model: PreferenceEstimator, fast: Sequence[str], rows: object, lr: object
) -> bool:
    """Whether ``mlp_adapt`` applies: the fast group is exactly the MLP's parameters, the
    model has no additive parts, the rows are encoded (no embedding adapts) and ``lr`` is
    one rate (a per-parameter Meta-SGD rate on W₀ breaks the identities)."""
    mlp = {name for pair in model.linears for name in pair}
    plain_lr = isinstance(lr, int | float)
    return set(fast) == mlp and not model.parts and isinstance(rows, Encoded) and plain_lr


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
) -> tuple[Params, Tensor]:
    """``steps`` SGD steps on T tasks' masked support MSE, every MLP parameter per task.

    ``encoded``: user (T, E_u), items (T, N, E_i); ``ratings``, ``mask`` (T, N). The MLP
    parameters in ``params`` are shared ((H, W), …) or already per task ((T, H, W), …).
    Returns the adapted MLP parameters, each (T, ...), and the support losses before each
    step and after the last (T, steps + 1). Differentiable to second order unless
    ``first_order``.
    """
    (w0, b0), *rest = model.linears
    width, tasks = model.user_width, ratings.shape[0]
    m = mask.to(ratings.dtype)
    count = (m.sum(-1) + model.config.support_prior).clamp(min=1.0)  # (T,)
    coef = (2 * m / count.unsqueeze(-1)).unsqueeze(-1)  # (T, N, 1): d loss / d pred
    user, items = encoded.user, encoded.items
    fixed_user = user.detach() if first_order else user  # the factors a gradient brings in
    fixed_items = items.detach() if first_order else items
    gram = items @ fixed_items.mT  # (T, N, N)
    spread = 1 + (user * fixed_user).sum(-1, keepdim=True)  # (T, 1)
    weight = params[w0]  # (…, H, W)
    a = (user.unsqueeze(-2) @ weight[..., :width].mT).squeeze(-2) + params[b0]  # (T, H)
    share = items @ weight[..., width:].mT  # (T, N, H)
    later = {k: params[k] for pair in rest for k in pair}
    first = share + a.unsqueeze(-2)  # (T, N, H): the first layer's pre-activations
    sum_g: Tensor | None = None  # Σ over steps of G (T, N, H)
    losses = []
    for step in range(steps + 1):
        pre, hidden = _forward(model, later, first)
        residual = pre[-1].squeeze(-1) - ratings  # (T, N)
        losses.append((residual * residual * m).sum(-1) / count)
        if step == steps:
            break
        grads, g = _backward(model, later, pre[:-1], hidden, residual.unsqueeze(-1) * coef)
        if first_order:
            grads, g = {k: v.detach() for k, v in grads.items()}, g.detach()
        later = {k: torch.add(v, grads[k], alpha=-lr) for k, v in later.items()}
        moved = (g.sum(-2) * spread).unsqueeze(-2)  # (T, 1, H): the user share's move
        first = torch.baddbmm(torch.add(first, moved, alpha=-lr), gram, g, alpha=-lr)
        sum_g = g if sum_g is None else sum_g + g
    shapes = model.shapes()
    adapted = {k: _per_task(v, shapes[k], tasks) for k, v in later.items()}
    adapted[w0] = _per_task(weight, shapes[w0], tasks)
    adapted[b0] = _per_task(params[b0], shapes[b0], tasks)
    if sum_g is not None:
        g_user = sum_g.sum(-2).unsqueeze(-1) * fixed_user.unsqueeze(-2)  # (T, H, E_u)
        adapted[w0] = weight - lr * torch.cat([g_user, sum_g.mT @ fixed_items], dim=-1)
        adapted[b0] = params[b0] - lr * sum_g.sum(-2)
    return adapted, torch.stack(losses, dim=-1)


def _forward(
    model: PreferenceEstimator, later: Params, first: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """The layers after the first, from its pre-activations ``first`` (T, N, H): every
    pre-activation (the last one the predictions (T, N, 1)) and the hidden ReLU outputs."""
    pre, hidden = [first], []
    for w, b in model.linears[1:]:
        hidden.append(pre[-1].relu())
        weight, bias = later[w], later[b].unsqueeze(-2)
        if weight.dim() == 3:  # per task: the bias add fused into the batched matmul
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


def _per_task(value: Tensor, shape: torch.Size, tasks: int) -> Tensor:
    """``value`` of parameter shape ``shape`` with a leading task dim T (a view if shared)."""
    return value if value.dim() > len(shape) else value.expand(tasks, *shape)
