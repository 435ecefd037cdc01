"""The row-space inner loop of MeLU's recipe as one autograd node, its reverse pass by hand.

``kernel_mlp.mlp_adapt`` runs ``steps`` SGD steps of the layers after the first (per task
(T, …)) and moves the first pre-activations A (T, N, H) in row space. Differentiated by
autograd, that loop records ~30 ops per step and replays ~70 backward nodes through the
engine. Here the forward runs without a graph (fused, partly in place) and saves per step
the hidden outputs hⱼ, the back-propagated δⱼ and the weights; the backward is the
hand-derived reverse of every step, second order (the reverse of the inner gradient too),
in ~25 ops per step. ReLU's second derivative is 0 almost everywhere, so its masks
(hⱼ > 0) are constants of the reverse.

One step, layers j = 1..m after the first (hⱼ = relu(aⱼ₋₁), aⱼ = hⱼ Wⱼᵀ + bⱼ, a₀ = A,
the prediction aₘ (T, N, 1)):

    r = aₘ − y,  δₘ = κ r                         (κ = d loss / d prediction per row)
    δⱼ₋₁ = (δⱼ Wⱼ) ⊙ [hⱼ > 0],  gWⱼ = δⱼᵀ hⱼ,  gbⱼ = Σₙ δⱼ
    Wⱼ ← Wⱼ − lr gWⱼ,  bⱼ ← bⱼ − lr gbⱼ,  A ← A − lr M δ₀,  moved += δ₀

with M (T, N, N) the step's row-space matrix (``kernel_mlp``: X Xᵀ + (1 + u·u) 1 1ᵀ).
Outputs: moved = Σ δ₀ (T, N, H), the residuals r of every step and after the last
(T, N, steps + 1) and the adapted layers. The node is once differentiable (the meta-gradient;
no Hessian of the meta-loss through it). tests/test_kernel_unroll.py pins it to autograd of
the same loop written plainly and to finite differences (float64); tests/test_maml.py,
through ``meta_loss``, to the general batched kernel and the generic ``torch.func`` path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

Layers = list[tuple[Tensor, Tensor]]  # per layer after the first: W (T, out, in), b (T, out)


def unrolled(
    first: Tensor,
    gram: Tensor,
    ratings: Tensor,
    coef: Tensor,
    layers: Layers,
    steps: int,
    lr: float,
) -> tuple[Tensor, Tensor, Layers]:
    """``steps`` second-order-differentiable SGD steps (see the module docstring).

    ``first`` (T, N, H): A before the first step; ``gram`` (T, N, N): M; ``ratings`` (T, N);
    ``coef`` (T, N, 1): κ; ``layers``: the layers after the first, per task (T, …).
    Returns (moved (T, N, H), residuals (T, N, steps + 1), the adapted layers)."""
    flat = [t for pair in layers for t in pair]
    out = _Unrolled.apply(first, gram, ratings, coef, steps, lr, *flat)
    moved, residuals, *adapted = out
    return moved, residuals, list(zip(adapted[::2], adapted[1::2], strict=True))


def _forward_rows(first: Tensor, layers: Layers) -> tuple[list[Tensor], Tensor]:
    """The hidden outputs hⱼ = relu(aⱼ₋₁) (T, N, inⱼ) and the predictions aₘ (T, N, 1);
    ``layers``' biases (T, 1, out)."""
    hidden, a = [], first
    for w, b in layers:
        hidden.append(a.relu())
        a = torch.baddbmm(b, hidden[-1], w.mT)
    return hidden, a


class _Unrolled(torch.autograd.Function):
    """``unrolled`` as one node: forward without a graph, the reverse by hand."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        first: Tensor,
        gram: Tensor,
        ratings: Tensor,
        coef: Tensor,
        steps: int,
        lr: float,
        *flat: Tensor,
    ) -> tuple[Tensor, ...]:
        # biases kept (T, 1, out) and residuals (T, N, 1) inside: no reshaping per step
        layers = [(w, b.unsqueeze(-2)) for w, b in zip(flat[::2], flat[1::2], strict=True)]
        saved: list[tuple[list[Tensor], list[Tensor], Layers]] = []  # per step: h, δ, layers
        residuals, moved, target = [], torch.zeros_like(first), ratings.unsqueeze(-1)
        a0 = first
        for step in range(steps + 1):
            hidden, pred = _forward_rows(a0, layers)
            residual = pred - target  # (T, N, 1)
            residuals.append(residual)
            if step == steps:
                saved.append((hidden, [], layers))
                break
            delta = [residual * coef]  # δₘ, then δₘ₋₁ … δ₀ (reversed below)
            new: Layers = []
            for (w, b), h in zip(reversed(layers), reversed(hidden), strict=True):
                d = delta[-1]
                step_b = torch.add(b, d.sum(-2, keepdim=True), alpha=-lr)
                new.append((torch.baddbmm(w, d.mT, h, alpha=-lr), step_b))
                delta.append(torch.ops.aten.threshold_backward(_times(d, w), h, 0))
            saved.append((hidden, delta[::-1], layers))
            g = delta[-1]  # δ₀ (T, N, H)
            moved.add_(g)
            a0 = torch.baddbmm(a0, gram, g, alpha=-lr)
            layers = new[::-1]
        # intermediates on ctx itself (no version-counter checks for ~70 tensors); the
        # inputs (M, the starting weights) and outputs (the adapted weights) go through
        # save_for_backward: in-place changes to them are caught, and no reference cycle
        ctx.steps, ctx.lr, ctx.coef = steps, lr, coef  # type: ignore[attr-defined]
        ctx.saved = [(h, d) for h, d, _ in saved]  # type: ignore[attr-defined]
        weights = [[w for w, _ in ls] for _, _, ls in saved]
        ctx.step_weights = weights[1:-1]  # type: ignore[attr-defined]
        ctx.save_for_backward(gram, *weights[0], *weights[-1])
        ctx.set_materialize_grads(False)  # the residuals' gradient is None in training
        out = [moved, torch.cat(residuals, dim=-1)]
        return (*out, *(t for w, b in layers for t in (w, b.squeeze(-2))))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        steps, lr, coef = ctx.steps, ctx.lr, ctx.coef
        g_moved, g_res, *g_layers = grads  # None: that output does not reach the loss
        depth = len(g_layers) // 2
        gram, *ends = ctx.saved_tensors
        start, last = ends[:depth], ends[depth:]  # the starting and the adapted Wⱼ
        weights = [start, *ctx.step_weights, last] if steps else [last]
        saved = [(h, d, w) for (h, d), w in zip(ctx.saved, weights, strict=True)]
        if g_moved is None:
            g_moved = torch.zeros_like(saved[-1][0][0])  # (T, N, H), as relu(A) at the end
        # adjoints of the current Wⱼ and bⱼ, accumulated in place (contiguous: a transposed
        # buffer sends baddbmm_ to a per-task loop of addmm_)
        wbar = [_buffer(g, w, w.shape) for g, w in zip(g_layers[::2], last, strict=True)]
        bbar = [  # (T, 1, out)
            _buffer(None if g is None else g.unsqueeze(-2), w, (*w.shape[:-2], 1, w.shape[-2]))
            for g, w in zip(g_layers[1::2], last, strict=True)
        ]
        gbar = torch.zeros_like(gram)
        abar: Tensor | None = None  # adjoint of A at the current step (None: 0 so far)
        for step in range(steps, -1, -1):
            hidden, delta, weights = saved[step]
            hbar: list[Tensor | None] = [None] * depth  # adjoints of hⱼ from the gradient
            # adjoint of aₘ (T, N, 1); None: 0 (the last step's forward then needs no reverse)
            a_bar = None if g_res is None else g_res[..., step : step + 1]
            if step < steps:
                g = delta[0]  # δ₀
                dbar = g_moved  # δ̄₀ = Ḡ − lr Mᵀ Ā
                if abar is not None:
                    dbar = torch.baddbmm(g_moved, gram.mT, abar, alpha=-lr)
                    gbar.baddbmm_(abar, g.mT, alpha=-lr)
                for j in range(depth):  # δⱼ₋₁ = (δⱼ Wⱼ) ⊙ [hⱼ > 0]; gWⱼ, gbⱼ from δⱼ
                    w, h, d = weights[j], hidden[j], delta[j + 1]
                    e = torch.ops.aten.threshold_backward(dbar, h, 0)
                    nxt = torch.baddbmm(torch.bmm(e, w.mT), h, wbar[j].mT, alpha=-lr)  # + hⱼ ḡWⱼᵀ
                    nxt = nxt.add_(bbar[j], alpha=-lr)  # + ḡbⱼ
                    hbar[j] = _times(d, wbar[j]).mul_(-lr)  # δⱼ ḡWⱼ
                    wbar[j].baddbmm_(d.mT, e)
                    dbar = nxt
                # δₘ = κ r: + κ δ̄ₘ
                a_bar = dbar * coef if a_bar is None else torch.addcmul(a_bar, dbar, coef)
            if a_bar is None:
                continue
            for j in range(depth - 1, -1, -1):  # aⱼ = hⱼ Wⱼᵀ + bⱼ, hⱼ = relu(aⱼ₋₁)
                w, h = weights[j], hidden[j]
                from_grad = hbar[j]
                if from_grad is None:
                    h_bar = _times(a_bar, w)
                elif a_bar.shape[-1] == 1:  # the output layer: a broadcast product
                    h_bar = torch.addcmul(from_grad, a_bar, w)
                else:
                    h_bar = torch.baddbmm(from_grad, a_bar, w)
                wbar[j].baddbmm_(a_bar.mT, h)
                bbar[j].add_(a_bar.sum(-2, keepdim=True))
                a_bar = torch.ops.aten.threshold_backward(h_bar, h, 0)
            abar = a_bar if abar is None else abar + a_bar
        if abar is None:
            abar = torch.zeros_like(g_moved)
        out: list[Tensor | None] = [abar, gbar, None, None, None, None]
        for w, b in zip(wbar, bbar, strict=True):
            out += [w, b.squeeze(-2)]
        return tuple(out)


def _times(x: Tensor, w: Tensor) -> Tensor:
    """x @ w (T, N, in) of x (T, N, out) and w (T, out, in); the output layer's (out = 1)
    as a broadcast product, not a K = 1 matmul (a third of its time)."""
    return x * w if x.shape[-1] == 1 else torch.bmm(x, w)


def _buffer(grad: Tensor | None, like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A contiguous adjoint buffer to accumulate into: ``grad`` copied, or zeros of
    ``shape`` (``like``'s dtype and device) when that output's gradient is None."""
    if grad is None:
        return like.new_zeros(shape)
    return grad.clone(memory_format=torch.contiguous_format)
