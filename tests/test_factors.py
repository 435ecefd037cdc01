"""The collaborative model part (``ModelConfig.factors``), episodes and hidden items.

Tiny float64 problems built here pin the math: the part adapts alike in both kernels
(values and second-order meta-gradient), one inner step with the support prior λ moves
the user's bias by the baseline predictor's shrunk mean residual, episodes cover every
training user once with disjoint support and query, hidden items become "unknown".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_maml import assert_kernels_agree, tiny_batch, tiny_space

from melu.config import DataConfig, ModelConfig
from melu.features import UNKNOWN
from melu.model.estimator import Params, PreferenceEstimator
from melu.model.linear import linear_applies
from melu.model.maml import Examples, adapt
from melu.prepare import RatingRows
from melu.training.episodes import episodes, hidden_ids, hide_items

LR = 0.2


def factor_model(fast: str, prior: float = 2.0) -> tuple[PreferenceEstimator, Params]:
    space, _ = tiny_space()
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=3, hidden=(5, 4), fast_params=fast, factors=2, support_prior=prior
    )
    model = PreferenceEstimator(config, space)
    params = model.init_params(torch.float64, head=False)
    gen = torch.Generator().manual_seed(3)
    for name in ("content.weight", "prior.weight", "prior.bias", "item.bias", "item.factor"):
        params[name] = torch.randn(params[name].shape, generator=gen, dtype=torch.float64) * 0.3
    params["user.factor"] = torch.full((2,), 0.1, dtype=torch.float64)
    return model, {k: v.requires_grad_() for k, v in params.items()}


def test_the_factor_part_has_its_parameters_and_fast_groups() -> None:
    model, params = factor_model("user")
    assert model.fast_names("user") == ["user.bias", "user.factor"]
    assert set(model.fast_names("user_mlp")) == {
        *model.fast_names("mlp"),
        *model.fast_names("user"),
    }
    item = next(f for f in model.space.fields if f.name == "item")
    assert params["item.factor"].shape == (item.size, 2) and params["item.bias"].shape == (
        item.size,
    )
    assert model.predict(params, tiny_batch()[0].inputs).shape == (4, 6)


@pytest.mark.parametrize("fast", ["user", "user_mlp"])
def test_factor_part_adapts_alike_in_both_kernels(fast: str) -> None:
    model, params = factor_model(fast)
    _, grads = assert_kernels_agree(model, params, LR)
    assert grads["item.factor"].abs().sum() > 0  # the meta-gradient reaches items


@pytest.mark.parametrize("prior", [0.0, 2.0])
def test_linear_kernel_adapts_the_user_offsets_as_the_generic_path(prior: float) -> None:
    """kernel="linear" (closed-form gradient of the user's bias and factor) == the generic
    torch.func path: adapted values, inner losses, second-order meta-gradient of every
    parameter (embeddings, MLP, item tables, prior), with and without the ridge anchor."""
    model, params = factor_model("user", prior)
    adapted, grads = assert_kernels_agree(model, params, LR, kernel="linear")
    assert not torch.allclose(adapted["user.factor"], params["user.factor"])
    assert all(grads[k].abs().sum() > 0 for k in ("item.factor", "mlp.4.weight", "prior.weight"))
    assert linear_applies(model, model.fast_names())
    assert not linear_applies(model, model.fast_names("user_mlp"))


def test_linear_kernel_refuses_a_fast_group_it_does_not_cover() -> None:
    model, params = factor_model("user_mlp")
    with pytest.raises(ValueError, match="linear"):
        adapt(model, params, tiny_batch()[0], steps=1, lr=LR, kernel="linear")


def test_one_step_with_the_support_prior_is_the_shrunk_mean_residual() -> None:
    """With λ = support_prior and lr ½, one step moves b_u by Σ(r − pred) / (n + λ): the
    baseline predictor's shrunk user offset, for any n."""
    lam = 5.0
    model, params = factor_model("user", prior=lam)
    support, _ = tiny_batch()
    with torch.no_grad():
        before = model.predict(params, support.inputs)  # (T, N)
    adapted, _ = adapt(
        model, params, support, steps=1, lr={"user.bias": 0.5, "user.factor": 0.0},
        kernel="batched",
    )  # fmt: skip
    m = support.mask.double()
    expected = ((support.ratings - before) * m).sum(1) / (m.sum(1) + lam)
    moved = adapted["user.bias"][:, 0] - params["user.bias"][0]
    assert torch.allclose(moved, expected, atol=1e-12)


def rating_rows(counts: list[int]) -> RatingRows:
    users = np.repeat(np.arange(len(counts)), counts)
    items = np.concatenate([np.arange(c) for c in counts])
    ratings = (items % 5 + 1).astype(np.float32)
    return RatingRows(
        torch.from_numpy(users.astype(np.int32)),
        torch.from_numpy(items.astype(np.int32)),
        torch.from_numpy(ratings),
    )


def test_episodes_cover_every_user_once_with_disjoint_support_and_query() -> None:
    counts = [3, 4, 9, 25, 300]
    rows = rating_rows(counts)
    ids = torch.arange(100, 105)
    config = DataConfig(query_size=10, max_support=90)
    tasks = episodes(rows, ids, config, seed=0)
    assert tasks.user_rows.tolist() == [1, 2, 3, 4]  # fewer than 4 ratings: no episode
    assert tasks.user_ids.tolist() == [101, 102, 103, 104]
    q, s = tasks.query_mask.sum(1), tasks.support_mask.sum(1)
    assert q.tolist() == [2, 4, 10, 10]  # min(query_size, n // 2)
    assert (s >= 1).all() and (s <= torch.tensor([2, 5, 15, 90])).all()
    for t in range(4):
        sup = set(tasks.support_items[t][tasks.support_mask[t]].tolist())
        qry = set(tasks.query_items[t][tasks.query_mask[t]].tolist())
        assert not sup & qry and sup | qry <= set(range(counts[t + 1]))
    again = episodes(rows, ids, config, seed=0)
    other = episodes(rows, ids, config, seed=1)
    assert torch.equal(again.support_items, tasks.support_items)
    assert not torch.equal(other.query_items, tasks.query_items)


def test_hidden_items_become_unknown_and_nothing_else_changes() -> None:
    ids = torch.tensor([[0, 1, 2, 3], [3, 4, 5, 0]])
    hidden = torch.tensor([False, True, False, True, False, False])
    out = hide_items({"item": ids, "genre": ids + 10}, "item", hidden)
    assert out["item"].tolist() == [[0, UNKNOWN, 2, UNKNOWN], [UNKNOWN, 4, 5, 0]]
    assert torch.equal(out["genre"], ids + 10)
    drawn = hidden_ids(10_000, 0.2, 7, torch.device("cpu"))
    assert not drawn[UNKNOWN] and 0.17 < drawn.float().mean() < 0.23
    assert torch.equal(drawn, hidden_ids(10_000, 0.2, 7, torch.device("cpu")))


def test_examples_keep_their_shape() -> None:
    model, params = factor_model("user")
    support, _ = tiny_batch()
    one = Examples(
        {k: v[0] for k, v in support.inputs.items()}, support.ratings[0], support.mask[0]
    )
    adapted, losses = adapt(model, params, one, steps=2, lr=LR)
    assert adapted["user.bias"].shape == (1,) and losses.shape == (3,)


@pytest.mark.parametrize("anchor", [True, False])
def test_the_anchor_makes_many_steps_converge_to_the_ridge_solution(anchor: bool) -> None:
    """With the ridge term λ‖δ‖² (anchor) gradient descent on the user's bias converges to
    Σ residual / (n + λ), the baseline predictor's shrunk offset, for any number of steps
    beyond convergence; without it, to the unshrunk mean residual Σ residual / n."""
    lam = 5.0
    model, params = factor_model("user", prior=lam)
    model.anchored = ("user.bias", "user.factor") if anchor else ()
    support, _ = tiny_batch()
    with torch.no_grad():
        before = model.predict(params, support.inputs)
    rates = {"user.bias": 0.3, "user.factor": 0.0}
    adapted, _ = adapt(model, params, support, steps=200, lr=rates, kernel="batched")
    m = support.mask.double()
    residual = ((support.ratings - before) * m).sum(1)
    expected = residual / (m.sum(1) + lam) if anchor else residual / m.sum(1)
    moved = adapted["user.bias"][:, 0] - params["user.bias"][0]
    assert torch.allclose(moved, expected, atol=1e-8)
