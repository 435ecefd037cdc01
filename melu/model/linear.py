"""The linear inner-loop kernel: the user's bias and factor adapted by a closed-form gradient.

When the fast parameters are only the collaborative part's per-user offsets (``user.bias``,
``user.factor``; the default model's ``fast_params="user"``) and that part is the model's
only one, a task's prediction is affine in them:

    pred_n = base_n + b_u + q_n · p_u,   base_n = network(x_n) + b_i(n) + b⁰ + q_n · p⁰

with ``base`` (T, N) and the item factors ``q`` (T, N, k) independent of the fast parameters
(b⁰, p⁰: the user's prior bias and factor from their features). ``Affine`` holds them, computed once per adaptation (from the
shared parameters, so the meta-gradient flows into them; ``affine`` from encoded rows, or
by the caller from rows packed without padding, ``melu.training.packed``), and each inner
step of ``linear_step`` is then a few (T, N)-sized ops: d loss / d b_u = Σ_n c_n, d loss / d p_u = Σ_n c_n q_n, with
c_n = d loss / d pred_n. The batched kernel instead re-runs the part and differentiates it
by autograd every step. tests/test_maml.py pins this kernel to the generic ``torch.func``
path in float64 (adapted values and second-order meta-gradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from torch import Tensor

from melu.model.collaborative import collaborative, item_terms
from melu.model.estimator import Encoded, Params, PreferenceEstimator
from melu.model.kernel import Step


class Affine(NamedTuple):
    """Rows of T tasks whose prediction is affine in the user offsets (see the module doc):
    ``base`` (T, N), the prediction at zero offsets; ``factors`` (T, N, k), the item factors."""

    base: Tensor
    factors: Tensor


class AffineExamples(NamedTuple):
    """``Examples`` whose rows are already in affine form: ``rows``, ``ratings`` (T, N)
    float, ``mask`` (T, N) bool (false on padding rows)."""

    rows: Affine
    ratings: Tensor
    mask: Tensor


def linear_applies(model: PreferenceEstimator, fast: Sequence[str]) -> bool:
    """Whether ``fast`` adapts only the collaborative part's user offsets (and that part
    is the model's only one): then ``kernel="linear"`` computes what ``"batched"`` does."""
    return bool(fast) and set(fast) <= set(model.user_params) and model.parts == (collaborative,)


def user_prior(params: Mapping[str, Tensor], user: Tensor) -> Tensor:
    """The prior (b⁰, p⁰) (..., 1 + k) of user embeddings (..., E_u), without offsets."""
    return user @ params["prior.weight"].mT + params["prior.bias"]


def affine(model: PreferenceEstimator, params: Mapping[str, Tensor], encoded: Encoded) -> Affine:
    """The affine form of encoded rows (user (T, E_u), items (T, N, E_i)) under ``params``."""
    item = item_terms(params, encoded)  # (T, N, k+1)
    prior = user_prior(params, encoded.user).unsqueeze(-2)  # (T, 1, k+1)
    return at_prior(model.network(params, encoded), item, prior)


def at_prior(network: Tensor, item: Tensor, prior: Tensor) -> Affine:
    """``Affine`` of rows from the network's output (..., N), the item terms (b_i, q_i)
    (..., N, 1 + k) and the user prior (b⁰, p⁰) broadcasting against them."""
    factors = item[..., 1:]
    base = network + item[..., 0] + prior[..., 0] + (factors * prior[..., 1:]).sum(-1)
    return Affine(base, factors)


def affine_predict(params: Mapping[str, Tensor], rows: Affine) -> Tensor:
    """Predictions (T, N) of ``rows`` at the user offsets in ``params`` (shared or (T, ...))."""
    offset = (rows.factors * params["user.factor"].unsqueeze(-2)).sum(-1)  # (T, N)
    return rows.base + params["user.bias"] + offset


def linear_step(
    model: PreferenceEstimator,
    frozen: Mapping[str, Tensor],
    rows: Affine,
    ratings: Tensor,
    mask: Tensor,
) -> Step:
    """The inner step's gradient function for T tasks whose fast parameters are user offsets.

    ``frozen``: every parameter but the fast ones; ``rows``: the support in affine form;
    ``ratings``, ``mask`` (T, N). The returned function maps the fast offsets, each per
    task ((T, 1) / (T, k)), to (their gradients of each task's masked support MSE, losses
    (T,)); differentiable (second order) like the other kernels.
    """
    m = mask.to(ratings.dtype)  # (T, N)
    count = (m.sum(-1) + model.config.support_prior).clamp(min=1.0)  # (T,)
    coef = 2 * m / count.unsqueeze(-1)  # d loss / d pred per residual

    def step(fast: Params) -> tuple[Params, Tensor]:
        residual = affine_predict({**frozen, **fast}, rows) - ratings  # (T, N)
        losses = (residual * residual * m).sum(-1) / count
        cotangent = residual * coef  # (T, N)
        grads: Params = {}
        if "user.bias" in fast:
            grads["user.bias"] = cotangent.sum(-1, keepdim=True)  # (T, 1)
        if "user.factor" in fast:
            grads["user.factor"] = (cotangent.unsqueeze(-1) * rows.factors).sum(-2)  # (T, k)
        return grads, losses

    return step
