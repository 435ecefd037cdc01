"""PreferenceEstimator: shapes, the functional EmbeddingBag, the shared/fast split."""

from __future__ import annotations

import torch
from test_maml import tiny_model, tiny_space
from torch import nn

from melu.model.estimator import apply, embed


def test_shapes_and_pure_function() -> None:
    model, params = tiny_model()
    space, tables = tiny_space()
    users = torch.tensor([0, 1, 2])
    items = torch.tensor([[0, 1], [2, 3], [4, 5]])
    features = tables.gather(users, items)
    x = embed(model, params, features)
    assert x.shape == (3, 2, model.embedding_width)
    assert model.embedding_width == 3 * len(space.fields)
    pred = apply(model, params, features)
    assert pred.shape == (3, 2)
    assert torch.equal(pred, apply(model, params, x))  # features or embedded rows
    shifted = {k: v + 1.0 for k, v in params.items()}
    assert not torch.equal(apply(model, shifted, features), pred)  # params, not the module
    assert torch.equal(model(features), pred)


def test_multi_valued_fields_match_embedding_bag_mean() -> None:
    model, params = tiny_model()
    space, tables = tiny_space()
    multi = [f for f in space.fields if f.multi]
    assert multi, "the tiny space has a multi-valued field"
    for f in multi:
        idx = tables.items[f.name]  # (I, L), zeros pad; one item has no genre at all
        assert bool((idx == 0).all(1).any())
        bag = nn.EmbeddingBag(f.size, 3, mode="mean", padding_idx=0).double()
        with torch.no_grad():
            bag.weight.copy_(params[f"embeddings.{f.name}.weight"])
        features = tables.gather(torch.zeros(1, dtype=torch.long), torch.arange(len(idx))[None])
        x = embed(model, params, features)[0]  # (I, F·D)
        start = 3 * [g.name for g in space.fields].index(f.name)
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
