"""The closed-form inner step (``adapt(..., kernel="linear")``), pinned to autograd.

Float64 on the tiny problem of tests/test_maml.py with the default model's fast group
(``user``: the collaborative part's user bias and factor, anchored, λ > 0): the adapted
values, inner losses and second-order meta-gradients equal the generic ``torch.func``
path's task by task and the batched kernel's (autograd of the part).
"""

from __future__ import annotations

import pytest
import torch
from test_maml import LR, STEPS, grads_of, task, tiny_batch, tiny_space

from melu.config import ModelConfig
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.maml import EncodedExamples, adapt, meta_loss


def tiny_user_model(seed: int = 0) -> tuple[PreferenceEstimator, Params]:
    """The default model's shape in miniature: factors, fast ``user``, anchored prior;
    every weight perturbed so the MLP, the prior and the item rows all matter."""
    space, _ = tiny_space()
    torch.manual_seed(seed)
    config = ModelConfig(
        embedding_dim=3, hidden=(5, 4), fast_params="user", factors=2, support_prior=2.0
    )
    model = PreferenceEstimator(config, space)
    start = model.init_params(torch.float64, head=False)
    params = {k: (v + 0.3 * torch.randn_like(v)).requires_grad_() for k, v in start.items()}
    return model, params


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_linear_kernel_adapts_to_the_autograd_values(meta_sgd: bool) -> None:
    model, params = tiny_user_model()
    assert model.fast_names() == ["user.bias", "user.factor"] and model.anchored
    support, _ = tiny_batch()
    lr = {k: torch.rand_like(params[k]) * LR for k in model.fast_names()} if meta_sgd else LR
    linear, inner = adapt(model, params, support, steps=STEPS, lr=lr, kernel="linear")
    batched, inner_b = adapt(model, params, support, steps=STEPS, lr=lr, kernel="batched")
    assert inner.shape == (4, STEPS + 1) and (inner - inner_b).abs().max() < 1e-12
    for t in range(4):
        one, inner_t = adapt(model, params, task(support, t), steps=STEPS, lr=lr)
        assert (inner[t] - inner_t).abs().max() < 1e-12
        for k in params:
            if k in model.fast_names():
                assert (linear[k][t] - one[k]).abs().max() < 1e-12, (k, t)
                assert (linear[k][t] - batched[k][t]).abs().max() < 1e-12, (k, t)
                assert not torch.allclose(linear[k][t], params[k])  # it did adapt
            else:
                assert linear[k] is params[k]


@pytest.mark.parametrize("first_order", [False, True])
def test_linear_kernel_meta_gradient_equals_the_generic_one(first_order: bool) -> None:
    model, params = tiny_user_model(seed=3)
    support, query = tiny_batch()
    grads = {}
    for kernel in ("generic", "batched", "linear"):
        loss, _, _ = meta_loss(
            model, params, support, query, steps=STEPS, lr=LR, first_order=first_order,
            kernel=kernel,  # type: ignore[arg-type]
        )  # fmt: skip
        grads[kernel] = grads_of(loss, params)
    for k in params:
        assert (grads["linear"][k] - grads["generic"][k]).abs().max() < 1e-10, k
        assert (grads["linear"][k] - grads["batched"][k]).abs().max() < 1e-10, k
    assert grads["linear"]["content.weight"].abs().max() > 0  # it reaches the item side


def test_linear_kernel_takes_encoded_rows_and_refuses_nonlinear_groups() -> None:
    model, params = tiny_user_model()
    support, _ = tiny_batch()
    encoded = EncodedExamples(model.encode(params, support.inputs), support.ratings, support.mask)
    a, la = adapt(model, params, support, steps=STEPS, lr=LR, kernel="linear")
    b, lb = adapt(model, params, encoded, steps=STEPS, lr=LR, kernel="linear")
    assert torch.equal(la, lb) and all(torch.equal(a[k], b[k]) for k in model.fast_names())
    with pytest.raises(ValueError, match="linear"):
        adapt(model, params, support, steps=1, lr=LR, kernel="linear", fast=["mlp.4.bias"])
