"""The inner step in closed form for fast parameters that enter the prediction linearly.

With the default fast group (``user``: the collaborative part's ``user.bias`` b and
``user.factor`` f) nothing inside the MLP adapts and the prediction of a support row is
``r̂ = c + b + q·f``: c the rest of the model at b = f = 0 and q the row's item factor
(``melu.model.collaborative.linear_terms``), both fixed while adapting. The support MSE's
gradient is then, with the residual cotangent g = 2·m·(r̂ − r) / (n + λ) per row,
``∂/∂b = Σ g`` and ``∂/∂f = Σ g·q``: two reductions per step instead of an autograd pass
(or ``torch.func``'s tracing). ``adapt(..., kernel="linear")`` runs this step through the
same loop as every kernel (the anchored ridge term, rates, first/second order);
tests/test_maml.py pins it to the generic path in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from torch import Tensor

from melu.model.collaborative import LINEAR, collaborative, linear_terms
from melu.model.estimator import Encoded, Params, PreferenceEstimator


class _Cached(Protocol):
    """What a caller may already have of the support rows (``maml.EncodedExamples``)."""

    @property
    def network(self) -> Tensor | None: ...

    @property
    def items(self) -> Tensor | None: ...


def applies(model: PreferenceEstimator, fast: Sequence[str]) -> bool:
    """Whether ``fast`` adapts only parameters the prediction is linear in (the kernel's
    precondition): some of the collaborative part's user offsets, and nothing else."""
    return bool(fast) and set(fast) <= set(LINEAR) and model.parts == (collaborative,)


class LinearStep:
    """The closed-form gradient of T tasks' support losses (a ``kernel.Step``).

    ``frozen``: the parameters that do not adapt; ``rows``: the support encoded
    (``Encoded`` user (T, E_u), items (T, N, E_i)); ``ratings``, ``mask`` (T, N);
    ``cached``: the rows' MLP output and item terms, if the caller has them. The fast
    parameters come per task ((T, 1), (T, k)); everything stays differentiable (second
    order) in ``frozen`` through c and q."""

    def __init__(
        self,
        model: PreferenceEstimator,
        frozen: Mapping[str, Tensor],
        rows: Encoded,
        ratings: Tensor,
        mask: Tensor,
        cached: _Cached | None = None,
    ) -> None:
        self.frozen = {k: frozen[k] for k in LINEAR if k in frozen}
        items, network = (cached.items, cached.network) if cached is not None else (None, None)
        offset, self.q = linear_terms(frozen, rows, items)  # (T, N), (T, N, k)
        if network is None:
            network = model.network(frozen, rows)
        self.base = network + offset  # (T, N): fixed while adapting
        self.ratings, m = ratings, mask.to(ratings.dtype)
        # (T, 1) real rows (+ the inner loss's prior λ, as ``masked_mse``)
        count = (m.sum(-1, keepdim=True) + model.config.support_prior).clamp(min=1.0)
        self.coef = 2 * m / count  # (T, N): d loss / d pred per unit of residual

    def _residual(self, fast: Mapping[str, Tensor]) -> Tensor:
        """r̂ − r (T, N) at the fast values ``fast``."""
        p = {**self.frozen, **fast}
        pred = self.base + p["user.bias"] + (self.q * p["user.factor"].unsqueeze(-2)).sum(-1)
        return pred - self.ratings

    def loss(self, fast: Mapping[str, Tensor]) -> Tensor:
        """The support losses (T,) at ``fast``: Σ m·(r̂ − r)² / (n + λ) = Σ g·(r̂ − r) / 2."""
        residual = self._residual(fast)
        return (residual * self.coef * residual).sum(-1) * 0.5

    def __call__(self, fast: Params) -> tuple[Params, Tensor]:
        """(d loss / d each fast parameter (T, ...), losses (T,)) at ``fast``."""
        residual = self._residual(fast)
        cotangent = residual * self.coef  # (T, N): d loss / d pred
        losses = (cotangent * residual).sum(-1) * 0.5
        grads: Params = {}
        if "user.bias" in fast:
            grads["user.bias"] = cotangent.sum(-1, keepdim=True)  # (T, 1)
        if "user.factor" in fast:
            grads["user.factor"] = (cotangent.unsqueeze(-1) * self.q).sum(-2)  # (T, k)
        return grads, losses
