"""The MAML math, pinned on a tiny float64 problem built here (no data files)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import Tensor

from melu.config import FastGroup, ModelConfig
from melu.features import FeatureSpace
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.kernel_mlp import adapts_whole_mlp
from melu.model.maml import (
    Examples,
    Kernel,
    adapt,
    masked_mse,
    meta_loss,
    task_query_loss,
    trim,
)
from melu.tables import FeatureTables

STEPS, LR = 3, 0.1


def tiny_space() -> tuple[FeatureSpace, FeatureTables]:
    users = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 4],
            "gender": ["F", "M", "F", "M"],
            "age": [18, 25, 35, 56],
            "occupation": ["a", "b", "c", "a"],
            "zip": ["10001", "20002", "10003", "30004"],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": list(range(1, 9)),
            "title": [f"m{i}" for i in range(1, 9)],
            "year": [1990, 1991, 1995, 1998, 1999, 1985, 1979, 1996],
            "genres": [["x"], ["y", "z"], ["x", "z"], [], ["y"], ["z"], ["x", "y", "z"], ["x"]],
        }
    )
    space = FeatureSpace.build(users, items, (1.0, 5.0), 1.0, zip_prefix=1)
    return space, FeatureTables.build(space, users, items)


def tiny_model(fast: str = "mlp", seed: int = 0) -> tuple[PreferenceEstimator, Params]:
    space, _ = tiny_space()
    torch.manual_seed(seed)
    model = PreferenceEstimator(
        ModelConfig(embedding_dim=3, hidden=(5, 4), fast_params=fast, factors=0, support_prior=0.0),
        space,
    )
    params = {
        k: v.requires_grad_() for k, v in model.init_params(torch.float64, head=False).items()
    }
    return model, params


def tiny_batch(
    tasks: int = 4, width: int = 6, seed: int = 1, pad_from: int = 3
) -> tuple[Examples, Examples]:
    """(T, width) support and (T, 4) query; task t has ``pad_from + t`` real support rows."""
    _, tables = tiny_space()
    gen = torch.Generator().manual_seed(seed)
    users = torch.arange(tasks) % 4
    s_items = torch.randint(0, 8, (tasks, width), generator=gen)
    q_items = torch.randint(0, 8, (tasks, 4), generator=gen)
    s_mask = torch.arange(width) < (pad_from + torch.arange(tasks)).clamp(max=width)[:, None]
    s_rat = torch.randint(1, 6, (tasks, width), generator=gen).double() * s_mask
    q_rat = torch.randint(1, 6, (tasks, 4), generator=gen).double()
    support = Examples(tables.gather(users, s_items), s_rat, s_mask)
    query = Examples(tables.gather(users, q_items), q_rat, torch.ones(tasks, 4, dtype=torch.bool))
    return support, query


def task(batch: Examples, t: int) -> Examples:
    inputs = {k: v[t] for k, v in batch.inputs.items()}
    return Examples(inputs, batch.ratings[t], batch.mask[t])


def grads_of(loss: Tensor, params: Params) -> Params:
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


@pytest.mark.parametrize("kernel", ["generic", "batched"])
@pytest.mark.parametrize("fast", ["mlp", "head", "all"])
@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_meta_gradient_equals_per_task_loop(
    fast: str, first_order: bool, kernel: Kernel
) -> None:
    """Both kernels (vmapped generic, batched) == the per-task loop of the generic path.

    fast="all" adapts the embeddings, which the batched kernel differentiates by autograd
    (vjp) next to its hand-derived MLP gradient: the mechanism by which a model part
    outside the MLP joins adaptation."""
    model, params = tiny_model(fast)
    support, query = tiny_batch()
    kw = {"steps": STEPS, "lr": LR, "first_order": first_order}
    loss, per_task, inner = meta_loss(model, params, support, query, kernel=kernel, **kw)
    vm = grads_of(loss, params)
    losses = [
        task_query_loss(
            model, params, task(support, t), task(query, t), fast=model.fast_names(), **kw
        )
        for t in range(4)
    ]
    loop = grads_of(torch.stack([q for q, _ in losses]).mean(), params)
    assert torch.allclose(per_task, torch.stack([q for q, _ in losses]).detach(), atol=1e-12)
    assert torch.allclose(inner, torch.stack([i for _, i in losses]).detach(), atol=1e-12)
    for k in params:
        assert (vm[k] - loop[k]).abs().max() < 1e-10, k


@pytest.mark.parametrize("kernel", ["generic", "batched"])
def test_second_order_gradient_matches_finite_differences(kernel: Kernel) -> None:
    model, params = tiny_model()
    support, query = tiny_batch()

    def value(p: Params) -> float:
        with torch.no_grad():
            loss, _, _ = meta_loss(model, p, support, query, steps=STEPS, lr=LR, kernel=kernel)
        return float(loss)

    loss, _, _ = meta_loss(model, params, support, query, steps=STEPS, lr=LR, kernel=kernel)
    analytic = grads_of(loss, params)
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for name in params:
        for _ in range(2):
            i = int(torch.randint(params[name].numel(), (1,), generator=gen))
            if analytic[name].reshape(-1)[i] == 0:  # an unused row (e.g. padding index)
                continue
            shift = torch.zeros_like(params[name]).reshape(-1)
            shift[i] = eps
            shift = shift.view_as(params[name])
            plus = {**params, name: params[name].detach() + shift}
            minus = {**params, name: params[name].detach() - shift}
            fd = (value(plus) - value(minus)) / (2 * eps)
            assert abs(fd - float(analytic[name].reshape(-1)[i])) < 1e-7, (name, i)


@pytest.mark.parametrize("kernel", ["generic", "batched"])
def test_first_order_is_the_query_gradient_at_the_adapted_params(kernel: Kernel) -> None:
    model, params = tiny_model()
    support, query = tiny_batch()
    kw = {"steps": STEPS, "lr": LR, "kernel": kernel}
    first, _, _ = meta_loss(model, params, support, query, first_order=True, **kw)
    second, _, _ = meta_loss(model, params, support, query, **kw)
    fo, so = grads_of(first, params), grads_of(second, params)
    # hand-derived FOMAML: adapt without any graph, then differentiate the query loss at θ'
    reference = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(4):
        plain = {k: v.detach() for k, v in params.items()}
        adapted, _ = adapt(model, plain, task(support, t), steps=STEPS, lr=LR, first_order=True)
        adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
        q = task(query, t)
        g = grads_of(masked_mse(model.predict(adapted, q.inputs), q.ratings, q.mask), adapted)
        for k in reference:
            reference[k] += g[k] / 4
    for k in params:
        assert (fo[k] - reference[k]).abs().max() < 1e-12, k
    assert max((fo[k] - so[k]).abs().max() for k in model.fast_names()) > 1e-6
    assert max((fo[k] - so[k]).abs().max() for k in params if k.startswith("embeddings")) > 1e-6


@pytest.mark.parametrize("kernel", ["generic", "batched"])
def test_meta_gradient_reaches_every_parameter(kernel: Kernel) -> None:
    model, params = tiny_model("mlp")
    support, query = tiny_batch()
    loss, _, _ = meta_loss(model, params, support, query, steps=STEPS, lr=LR, kernel=kernel)
    for name, g in grads_of(loss, params).items():
        assert g.abs().sum() > 0, f"{name} gets no meta-gradient"


def test_adapt_lowers_the_support_loss() -> None:
    model, params = tiny_model()
    support, _ = tiny_batch()
    _, inner = adapt(model, params, task(support, 3), steps=10, lr=LR)
    assert inner.shape == (11,)
    assert bool((inner.diff() < 0).all())  # every step lowers it
    assert inner[-1] < 0.7 * inner[0]


def test_padding_rows_change_nothing() -> None:
    model, params = tiny_model()
    support, _ = tiny_batch(tasks=1, width=8, pad_from=5)
    real = trim(support)
    assert real.mask.shape == (1, 5) and bool(real.mask.all())
    a, inner_a = adapt(model, params, task(support, 0), steps=STEPS, lr=LR)
    b, inner_b = adapt(model, params, task(real, 0), steps=STEPS, lr=LR)
    assert torch.allclose(inner_a, inner_b, atol=1e-14)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-14)
    # garbage in the padded slots (other items, absurd ratings) is ignored as well
    garbage = {}
    for k, v in support.inputs.items():
        keep = support.mask if v.dim() == 2 else support.mask.unsqueeze(-1).expand_as(v)
        garbage[k] = torch.where(keep, v, v.flip(1))
    noisy = Examples(garbage, support.ratings + 7.0 * ~support.mask, support.mask)
    c, _ = adapt(model, params, task(noisy, 0), steps=STEPS, lr=LR)
    for k in a:
        assert torch.allclose(a[k], c[k], atol=1e-14)


@pytest.mark.parametrize("fast", ["mlp", "head", "all"])
def test_only_the_fast_group_changes(fast: str) -> None:
    model, params = tiny_model(fast)
    support, _ = tiny_batch()
    adapted, _ = adapt(model, params, task(support, 2), steps=STEPS, lr=LR)
    names = set(model.fast_names())
    assert (
        names
        == {
            "mlp": {k for k in params if k.startswith("mlp.")},
            "head": {k for k in params if k.startswith(model.head_prefix)},
            "all": set(params),
        }[fast]
    )
    for k in params:
        if k in names:
            assert not torch.equal(adapted[k], params[k]), f"{k} did not adapt"
        else:
            assert adapted[k] is params[k], f"{k} changed but is not fast"


@pytest.mark.parametrize("kernel", ["generic", "batched"])
def test_meta_sgd_learning_rates_get_a_gradient(kernel: Kernel) -> None:
    model, params = tiny_model()
    support, query = tiny_batch()
    lrs = {k: torch.full_like(params[k], LR).requires_grad_() for k in model.fast_names()}
    loss, _, _ = meta_loss(model, params, support, query, steps=STEPS, lr=lrs, kernel=kernel)
    g = grads_of(loss, lrs)
    assert all(v.abs().sum() > 0 for v in g.values())
    plain, _, _ = meta_loss(model, params, support, query, steps=STEPS, lr=LR, kernel=kernel)
    assert torch.allclose(loss, plain, atol=1e-14)  # equal rates == the scalar rate


def test_adapt_never_mutates_its_inputs() -> None:
    model, params = tiny_model("all")
    before = {k: v.detach().clone() for k, v in params.items()}
    support, _ = tiny_batch()
    adapt(model, params, task(support, 0), steps=STEPS, lr=LR)
    adapt(model, params, support, steps=STEPS, lr=LR, kernel="batched")
    assert all(torch.equal(before[k], params[k]) for k in params)


@pytest.mark.parametrize("fast", ["mlp", "head", "all"])
def test_batched_kernel_adapts_to_the_generic_values(fast: str) -> None:
    """adapt(kernel="batched") on T tasks == the generic torch.func path task by task:
    the adapted values of every fast parameter (embeddings included, which the kernel
    leaves to autograd) and the inner losses; non-fast parameters come back untouched."""
    model, params = tiny_model(fast)
    support, _ = tiny_batch()
    lrs = {k: torch.rand_like(params[k]) * LR for k in model.fast_names()}  # Meta-SGD too
    for lr in (LR, lrs):
        batched, inner = adapt(model, params, support, steps=STEPS, lr=lr, kernel="batched")
        assert inner.shape == (4, STEPS + 1)
        for t in range(4):
            one, inner_t = adapt(model, params, task(support, t), steps=STEPS, lr=lr)
            assert (inner[t] - inner_t).abs().max() < 1e-12
            for k in params:
                if k in model.fast_names():
                    assert batched[k].shape == (4, *params[k].shape)
                    assert (batched[k][t] - one[k]).abs().max() < 1e-12, (k, t)
                else:
                    assert batched[k] is params[k]


class WithUserBias(PreferenceEstimator):
    """A model part outside the MLP: a per-user bias b_u added to every prediction, adapted."""

    def __init__(self, config: ModelConfig, space: FeatureSpace) -> None:
        super().__init__(config, space)
        self.parts = (lambda p, encoded: p["user_bias"].unsqueeze(-1),)  # (…,) → (…, 1)

    def shapes(self) -> dict[str, torch.Size]:
        return {**super().shapes(), "user_bias": torch.Size(())}

    def fast_names(self, group: FastGroup | None = None) -> list[str]:
        return [*super().fast_names(group), "user_bias"]


def test_a_new_model_part_adapts_alike_in_both_kernels() -> None:
    """The extension mechanism: an additive part's fast parameter (no hand-derived code)
    gets the same adapted values and meta-gradient from the batched kernel (by vjp) as
    from the generic torch.func path."""
    space, _ = tiny_space()
    torch.manual_seed(0)
    model = WithUserBias(
        ModelConfig(
            embedding_dim=3, hidden=(5, 4), fast_params="mlp", factors=0, support_prior=0.0
        ),
        space,
    )
    params = {
        k: v.requires_grad_() for k, v in model.init_params(torch.float64, head=False).items()
    }
    params["user_bias"] = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    batched, grads = assert_kernels_agree(model, params, LR)
    assert not torch.allclose(batched["user_bias"], params["user_bias"])
    assert grads["user_bias"].abs() > 0


def assert_kernels_agree(
    model: PreferenceEstimator, params: Params, lr: float, kernel: Kernel = "batched"
) -> tuple[Params, Params]:
    """``kernel`` (batched or linear) on ``tiny_batch``'s 4 tasks == the generic path task
    by task: adapted fast values and inner losses (1e-12), second-order meta-gradient of
    every parameter (1e-10). Returns the kernel's adapted params and meta-gradient."""
    support, query = tiny_batch()
    batched, inner = adapt(model, params, support, steps=STEPS, lr=lr, kernel=kernel)
    for t in range(4):
        one, inner_t = adapt(model, params, task(support, t), steps=STEPS, lr=lr)
        assert (inner[t] - inner_t).abs().max() < 1e-12
        for k in model.fast_names():
            assert (batched[k][t] - one[k]).abs().max() < 1e-12, (k, t)
    grads = {}
    for name in ("generic", kernel):
        loss, _, _ = meta_loss(model, params, support, query, steps=STEPS, lr=lr, kernel=name)
        grads[name] = grads_of(loss, params)
    for k in params:
        assert (grads["generic"][k] - grads[kernel][k]).abs().max() < 1e-10, k
    return batched, grads[kernel]


@pytest.mark.parametrize("first_order", [False, True])
def test_melu_recipe_row_space_path_equals_the_general_batched_kernel(first_order: bool) -> None:
    """MeLU's recipe (exactly the MLP adapts, one rate) takes ``kernel_mlp``'s row-space
    path; Meta-SGD rates of that same constant take the general batched kernel (per-task
    W₀, hand-derived backward). Both give the same meta-loss, inner losses and meta-gradient
    (float64), and continuing an adaptation from per-task parameters (as
    ``predict_examples`` does) lands where one longer adaptation does."""
    model, params = tiny_model("mlp")
    fast = model.fast_names()
    rates = {k: torch.tensor(LR, dtype=torch.float64) for k in fast}
    assert adapts_whole_mlp(model, fast, LR) and not adapts_whole_mlp(model, fast, rates)
    support, query = tiny_batch()
    kw = {"steps": STEPS, "first_order": first_order, "kernel": "batched"}
    out = {}
    for name, lr in (("rows", LR), ("general", rates)):
        loss, per_task, inner = meta_loss(model, params, support, query, lr=lr, **kw)  # type: ignore[arg-type]
        out[name] = (per_task, inner, grads_of(loss, params))
    assert (out["rows"][0] - out["general"][0]).abs().max() < 1e-12
    assert (out["rows"][1] - out["general"][1]).abs().max() < 1e-12
    for k in params:
        assert (out["rows"][2][k] - out["general"][2][k]).abs().max() < 1e-10, k
    whole, _ = adapt(model, params, support, steps=STEPS, lr=LR, kernel="batched")
    part, _ = adapt(model, params, support, steps=1, lr=LR, kernel="batched")
    rest, _ = adapt(model, part, support, steps=STEPS - 1, lr=LR, kernel="batched")
    for k in fast:
        assert rest[k].shape == whole[k].shape == (4, *params[k].shape)
        assert (rest[k] - whole[k]).abs().max() < 1e-12, k
