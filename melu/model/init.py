"""A ``PreferenceEstimator``'s fresh parameters, drawn as the historic ``nn.Module`` drew them.

The estimator holds no weights (``melu.model.estimator``); its starting values come from
here: the embedding tables and the MLP by the very modules MeLU's network was built from,
in the same order, so a seeded run reproduces the historic values; then the collaborative
part's (after MeLU's draws, so those stay) and the ranking head's (its own generator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from melu.model import ranking

if TYPE_CHECKING:
    from melu.model.estimator import PreferenceEstimator


def initial_params(
    model: PreferenceEstimator,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    head: bool = True,
) -> dict[str, Tensor]:
    """Fresh initial parameters of ``model``, drawn from torch's global RNG (see
    ``PreferenceEstimator.init_params``)."""
    params = {k: v.to(device=device, dtype=dtype) for k, v in module_draws(model).items()}
    params[model.head_prefix + "bias"].fill_(sum(model.space.rating_scale) / 2)
    for name, shape in model.factor_shapes().items():  # drawn after MeLU's, so its stay
        scale = 0.01 if name == "item.factor" else 0.0
        params[name] = (torch.randn(shape) * scale).to(device=device, dtype=dtype)
    if model.factors:  # the network starts as a constant: the interaction is learned
        params[model.head_prefix + "weight"].zero_()
    if head and model.ranking:  # its own generator: the draws above never change
        ids = model.rank_shapes()["rank.item_bias"][0]
        start = ranking.init_head(model.rank_shapes(), torch.zeros(ids), seed=0)
        params.update({k: v.to(device=device, dtype=dtype) for k, v in start.items()})
    return params


def module_draws(model: PreferenceEstimator) -> dict[str, Tensor]:
    """The embedding tables and MLP weights exactly as ``nn.Embedding`` /
    ``nn.EmbeddingBag`` / ``nn.Linear`` draw them, named as the historic module's (float32,
    on the CPU, detached)."""
    dim = model.config.embedding_dim
    template = nn.Module()
    template.embeddings = nn.ModuleDict(
        {
            f.name: nn.EmbeddingBag(f.size, dim, mode="mean", padding_idx=0)
            if f.multi
            else nn.Embedding(f.size, dim)
            for f in model.space.fields
        }
    )
    layers: list[nn.Module] = []
    for n_in, n_out in model.widths:
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    template.mlp = nn.Sequential(*layers[:-1])
    return {k: v.detach() for k, v in template.named_parameters()}
