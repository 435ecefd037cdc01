"""PreferenceEstimator: shapes, the functional EmbeddingBag, the shared/fast split."""

from __future__ import annotations

import torch
from test_maml import tiny_model, tiny_space
from torch import nn

from melu.config import ModelConfig
from melu.model.estimator import Encoded, PreferenceEstimator


def test_shapes_and_pure_function() -> None:
    model, params = tiny_model()
    space, tables = tiny_space()
    users = torch.tensor([0, 1, 2])
    items = torch.tensor([[0, 1], [2, 3], [4, 5]])
    features = tables.gather(users, items)
    encoded = model.encode(params, features)
    assert encoded.user.shape == (3, model.user_width)
    assert encoded.items.shape == (3, 2, model.embedding_width - model.user_width)
    assert model.embedding_width == 3 * len(space.fields)
    pred = model.predict(params, features)
    assert pred.shape == (3, 2)
    assert torch.equal(pred, model.score(params, encoded))  # predict = score ∘ encode
    shifted = {k: v + 1.0 for k, v in params.items()}
    assert not torch.equal(model.predict(shifted, features), pred)  # params are the weights
    assert {k: v.shape for k, v in params.items()} == model.shapes()
    assert list(params) == list(model.shapes())


def test_score_equals_the_plain_mlp_on_concatenated_rows() -> None:
    """The factored first layer (user share once per task) is the textbook MLP."""
    model, params = tiny_model()
    _, tables = tiny_space()
    features = tables.gather(torch.tensor([0, 3]), torch.tensor([[0, 1, 2], [5, 6, 7]]))
    e = model.encode(params, features)
    h = torch.cat([e.user.unsqueeze(-2).expand(-1, 3, -1), e.items], dim=-1)
    for i, (w, b) in enumerate(model.linears):
        h = h @ params[w].T + params[b]
        h = h if i == len(model.linears) - 1 else h.relu()
    assert torch.allclose(model.score(params, e), h.squeeze(-1), atol=1e-12)
    # per-task (T, ...) MLP weights broadcast against rows with a leading task dim T
    per_task = {k: v.expand(2, *v.shape) if k.startswith("mlp.") else v for k, v in params.items()}
    assert torch.allclose(model.score(per_task, e), h.squeeze(-1), atol=1e-12)
    assert torch.allclose(model.score(params, Encoded(e.user[1], e.items[1], e.ids[1])), h[1, :, 0])


def test_init_params_draws_what_the_historic_module_drew() -> None:
    """Seeded runs reproduce: the same values as nn.Embedding(Bag)/nn.Linear in order."""
    space, _ = tiny_space()
    config = ModelConfig(
        embedding_dim=3, hidden=(5, 4), fast_params="mlp", factors=0, support_prior=0.0
    )
    torch.manual_seed(7)
    params = PreferenceEstimator(config, space).init_params()
    torch.manual_seed(7)
    emb = {
        f.name: nn.EmbeddingBag(f.size, 3, mode="mean", padding_idx=0) if f.multi
        else nn.Embedding(f.size, 3)
        for f in space.fields
    }  # fmt: skip
    linears = [nn.Linear(3 * len(space.fields), 5), nn.Linear(5, 4), nn.Linear(4, 1)]
    expected = {f"embeddings.{k}.weight": m.weight for k, m in emb.items()}
    for i, layer in enumerate(linears):
        expected[f"mlp.{2 * i}.weight"], expected[f"mlp.{2 * i}.bias"] = layer.weight, layer.bias
    expected["mlp.4.bias"] = torch.full((1,), 3.0)
    assert list(params) == list(expected)
    for k, v in expected.items():
        assert torch.equal(params[k], v.detach()), k


def test_multi_valued_fields_match_embedding_bag_mean() -> None:
    model, params = tiny_model()
    space, tables = tiny_space()
    multi = [f for f in space.fields if f.multi]
    assert multi, "the tiny space has a multi-valued field"
    item_names = [g.name for g in space.item_fields]
    for f in multi:
        idx = tables.items[f.name]  # (I, L), zeros pad; one item has no genre at all
        assert bool((idx == 0).all(1).any())
        bag = nn.EmbeddingBag(f.size, 3, mode="mean", padding_idx=0).double()
        with torch.no_grad():
            bag.weight.copy_(params[f"embeddings.{f.name}.weight"])
        features = tables.gather(torch.zeros(1, dtype=torch.long), torch.arange(len(idx))[None])
        x = model.encode(params, features).items[0]  # (I, E_i)
        start = 3 * item_names.index(f.name)
        assert torch.allclose(x[:, start : start + 3], bag(idx), atol=1e-12)


def test_fast_groups_split_by_name() -> None:
    model, params = tiny_model()
    mlp = model.fast_names("mlp")
    assert mlp and all(k.startswith("mlp.") for k in mlp)
    assert set(model.fast_names("head")) == {
        f"{model.head_prefix}weight",
        f"{model.head_prefix}bias",
    }
    assert set(model.fast_names("all")) == set(params)
    assert not any(k.startswith("embeddings.") for k in mlp)


def test_head_starts_at_the_rating_scale_midpoint() -> None:
    model, params = tiny_model()
    assert float(params[f"{model.head_prefix}bias"].detach()) == 3.0
