"""The hand-written reverse of the row-space inner loop (``melu.model.kernel_unroll``),
pinned in float64 to autograd of the same loop written plainly and to finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from melu.model.kernel_unroll import Layers, unrolled

T, N, H = 3, 5, 4  # tasks, rows, first hidden width
WIDTHS = [(H, 3), (3, 1)]  # the layers after the first: (in, out)


def inputs(seed: int, shared: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Layers]:
    """Random A (T, N, H), M = X Xᵀ + s (T, N, N), ratings, κ (T, N, 1; 0 on a padding row)
    and layers per task (T, …) — or shared ((out, in), expanded to T), as at the start."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = rand(T, N, 6)
    gram = x @ x.mT + 1.5
    coef = 2 * torch.rand(T, N, 1, generator=gen, dtype=torch.float64) / N
    coef[0, -1] = 0.0  # a padding row
    layers = []
    for n_in, n_out in WIDTHS:
        w, b = (
            (rand(n_out, n_in), rand(n_out)) if shared else (rand(T, n_out, n_in), rand(T, n_out))
        )
        layers.append((w.expand(T, n_out, n_in), b.expand(T, n_out)) if shared else (w, b))
    return rand(T, N, H), gram, rand(T, N), coef, layers


def plain(
    first: Tensor,
    gram: Tensor,
    ratings: Tensor,
    coef: Tensor,
    layers: Layers,
    steps: int,
    lr: float,
) -> tuple[Tensor, Tensor, Layers]:
    """The same loop by autograd: each step's gradient of Σ κ r² / 2 w.r.t. A and the layers
    (``create_graph``), A moved by −lr M G, the layers by SGD."""
    a0, moved, residuals = first, torch.zeros_like(first), []
    for step in range(steps + 1):
        out = a0
        for w, b in layers:
            out = out.relu() @ w.mT + b.unsqueeze(-2)
        residual = out.squeeze(-1) - ratings
        residuals.append(residual)
        if step == steps:
            break
        loss = (coef.squeeze(-1) * residual * residual).sum() / 2
        flat = [t for pair in layers for t in pair]
        g, *grads = torch.autograd.grad(loss, [a0, *flat], create_graph=True)
        new = [p - lr * d for p, d in zip(flat, grads, strict=True)]
        layers = list(zip(new[::2], new[1::2], strict=True))
        moved = moved + g
        a0 = a0 - lr * gram @ g
    return moved, torch.stack(residuals, dim=-1), layers


def leaves(first: Tensor, gram: Tensor, layers: Layers) -> list[Tensor]:
    return [
        first.requires_grad_(),
        gram.requires_grad_(),
        *(t.requires_grad_() for p in layers for t in p),
    ]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("used", ["all", "layers"])
def test_unrolled_values_and_reverse_equal_autograd_of_the_plain_loop(
    steps: int, shared: bool, used: str
) -> None:
    """Every output and its vjp w.r.t. every input: random cotangents on all outputs, or on
    the adapted layers only (moved and the residuals then get no gradient, None)."""
    lr, gen = 0.3, torch.Generator().manual_seed(7)
    results = []
    for fn in (unrolled, plain):
        first, gram, ratings, coef, layers = inputs(3, shared)
        if shared:  # differentiate the (out, in) leaves under the expand, as training does
            base = [
                (w[0].detach().requires_grad_(), b[0].detach().requires_grad_()) for w, b in layers
            ]
            layers = [(w.expand(T, *w.shape), b.expand(T, *b.shape)) for w, b in base]
            wrt = [first.requires_grad_(), gram.requires_grad_(), *(t for p in base for t in p)]
        else:
            wrt = leaves(first, gram, layers)
        moved, res, adapted = fn(first, gram, ratings, coef, layers, steps, lr)
        outs = [moved, res, *(t for p in adapted for t in p)]
        results.append((outs, wrt))
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in results[0][0]]
    keep = slice(0, None) if used == "all" else slice(2, None)
    grads = [
        torch.autograd.grad(outs[keep], wrt, cotangents[keep], materialize_grads=True)
        for outs, wrt in results
    ]
    for a, b in zip(results[0][0], results[1][0], strict=True):
        assert (a - b).abs().max() < 1e-12
    for a, b in zip(*grads, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-10


def test_unrolled_reverse_matches_finite_differences() -> None:
    first, gram, ratings, coef, layers = inputs(11)
    wrt = leaves(first, gram, layers)

    def fn(*xs: Tensor) -> tuple[Tensor, ...]:
        a, m, *flat = xs
        pairs = list(zip(flat[::2], flat[1::2], strict=True))
        moved, res, adapted = unrolled(a, m, ratings, coef, pairs, 2, 0.2)
        return (moved, res, *(t for p in adapted for t in p))

    assert torch.autograd.gradcheck(fn, tuple(wrt), eps=1e-6, atol=1e-6)
