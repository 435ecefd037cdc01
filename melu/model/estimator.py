"""PreferenceEstimator: field embeddings → concatenation → MLP → predicted rating.

Used only as a pure function of ``(params, inputs)`` through
``torch.func.functional_call``; nothing here is mutated per task. Parameter names split into
*shared* (``embeddings.*``, updated by the outer loop only) and *fast* (the adapted group).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from melu.config import FastGroup, ModelConfig
from melu.features import FeatureBatch, FeatureSpace

Params = dict[str, Tensor]


class Embedded(NamedTuple):
    """Embedded rows of tasks whose rows all share one user (every task does).

    ``user`` (..., E_u): the user fields' embeddings, once per task; ``items`` (..., N, E_i):
    the item fields' embeddings per row. The first layer then costs E_i, not E_u + E_i,
    multiply-adds per row and weight: the user's share is computed once per task.
    """

    user: Tensor
    items: Tensor


# raw field indices, already-embedded rows (..., N, E), or the factored form above
Inputs = FeatureBatch | Tensor | Embedded


class PreferenceEstimator(nn.Module):
    """MeLU's user-preference estimator.

    One embedding table per field (``EmbeddingBag(mode="mean", padding_idx=0)`` for
    multi-valued fields), concatenated to (..., N, F·D), then Linear-ReLU layers of sizes
    ``config.hidden`` and a Linear output (..., N).
    """

    def __init__(self, config: ModelConfig, space: FeatureSpace) -> None:
        super().__init__()
        self.config = config
        self.field_names = [f.name for f in space.user_fields + space.item_fields]
        self.user_field_names = [f.name for f in space.user_fields]
        dim = config.embedding_dim
        self.embeddings = nn.ModuleDict(
            {
                f.name: nn.EmbeddingBag(f.size, dim, mode="mean", padding_idx=0)
                if f.multi
                else nn.Embedding(f.size, dim)
                for f in space.fields
            }
        )
        layers: list[nn.Module] = []
        width = dim * len(self.field_names)
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head = nn.Linear(width, 1)
        with torch.no_grad():
            head.bias.fill_(sum(space.rating_scale) / 2)  # start at the scale's midpoint
        layers.append(head)
        self.mlp = nn.Sequential(*layers)
        self.head_prefix = f"mlp.{len(layers) - 1}."

    @property
    def embedding_width(self) -> int:
        return self.config.embedding_dim * len(self.field_names)

    def embed(self, features: FeatureBatch) -> Tensor:
        """field → (..., N) or (..., N, L) indices  →  (..., N, F·D) embeddings."""
        parts = []
        for name in self.field_names:
            table, idx = self.embeddings[name], features[name]
            weight: Tensor = table.weight  # type: ignore[assignment]
            rows = F.embedding(idx, weight)  # (..., N, D) or (..., N, L, D)
            if isinstance(table, nn.EmbeddingBag):
                # EmbeddingBag(mode="mean", padding_idx=0), written out so vmap and
                # double backward apply: mean over the non-padding entries, 0 if none.
                keep = (idx != 0).unsqueeze(-1).to(rows.dtype)  # (..., N, L, 1)
                rows = (rows * keep).sum(-2) / keep.sum(-2).clamp(min=1.0)
            parts.append(rows)
        return torch.cat(parts, dim=-1)

    def forward(self, inputs: Inputs, embed_only: bool | str = False) -> Tensor | Embedded:
        """Predicted ratings (..., N) for features or for pre-embedded rows (..., N, F·D)."""
        if isinstance(inputs, Embedded):
            return self._factored_mlp(inputs)
        if embed_only == "factored" and not isinstance(inputs, Tensor):
            return self.embed_factored(inputs)
        x = inputs if isinstance(inputs, Tensor) else self.embed(inputs)
        if embed_only:
            return x
        return self._layers(x, 0)

    def _layers(self, h: Tensor, start: int) -> Tensor:
        """``self.mlp[start:]`` on (..., N, W) rows → (..., N); weights shared or per task."""
        for layer in list(self.mlp)[start:]:
            h = linear(h, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer(h)
        return h.squeeze(-1)

    def _factored_mlp(self, e: Embedded) -> Tensor:
        """The MLP on ``Embedded`` rows: W₁·[u; xᵢ] + b₁ = (W₁ᵤ·u + b₁) + W₁ᵢ·xᵢ. (..., N)."""
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        width = e.user.shape[-1]
        weight = first.weight  # (H, E) or per task (T, H, E)
        user = linear(e.user.unsqueeze(-2), weight[..., :width], first.bias)  # (..., 1, H)
        if weight.dim() == 3 and e.items.dim() == 3:  # (T, N, E_i) rows, one fused kernel
            h = torch.baddbmm(user, e.items, weight[..., width:].mT)  # (T, N, H)
        else:
            h = linear(e.items, weight[..., width:]) + user  # (..., N, H)
        return self._layers(h, 1)

    def embed_factored(self, features: FeatureBatch) -> Embedded:
        """Features of rows that share one user per task → ``Embedded`` (user, items)."""
        n_user = len(self.user_field_names)
        x = self.embed(features)  # (..., N, F·D); user fields come first
        width = n_user * self.config.embedding_dim
        return Embedded(x[..., 0, :width], x[..., width:])

    def fast_names(self, group: FastGroup | None = None) -> list[str]:
        """Names of the parameters adapted per user for ``group`` (default: the config's)."""
        group = group or self.config.fast_params
        names = [n for n, _ in self.named_parameters()]
        if group == "all":
            return names
        if group == "head":
            return [n for n in names if n.startswith(self.head_prefix)]
        return [n for n in names if n.startswith("mlp.")]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for shared or per-task weights → (..., N, H).

    Shared: ``weight`` (H, E), ``bias`` (H,), any ``x`` (..., N, E). Per task (a batch of
    tasks adapted together without ``vmap``, see ``melu.model.maml.meta_loss``): ``weight``
    (T, H, E), ``bias`` (T, H), ``x`` (T, N, E). A ``bias`` of more dims than (H,) that is
    not per task must already broadcast against (..., N, H).
    """
    per_task_bias = bias is not None and bias.dim() == weight.dim() - 1 and bias.dim() > 1
    b = bias.unsqueeze(-2) if per_task_bias and bias is not None else bias
    if weight.dim() == 2:
        if b is None or b.dim() == 1:
            return F.linear(x, weight, b)
        return F.linear(x, weight) + b
    if x.dim() == 3 and b is not None:
        return torch.baddbmm(b, x, weight.mT)
    out = torch.matmul(x, weight.mT)
    return out if b is None else out + b


def apply(model: PreferenceEstimator, params: Mapping[str, Tensor], inputs: Inputs) -> Tensor:
    """The model as a pure function: predicted ratings (..., N)."""
    return functional_call(model, dict(params), (inputs,))


def embed(
    model: PreferenceEstimator, params: Mapping[str, Tensor], features: FeatureBatch
) -> Tensor:
    """Pure embedding stage: (..., N, F·D)."""
    return functional_call(model, dict(params), (features,), {"embed_only": True})


def embed_factored(
    model: PreferenceEstimator, params: Mapping[str, Tensor], features: FeatureBatch
) -> Embedded:
    """Pure embedding stage in the factored form (rows of one user per task)."""
    return functional_call(model, dict(params), (features,), {"embed_only": "factored"})


def init_params(model: PreferenceEstimator) -> Params:
    """The module's initial parameters as a plain dict (the meta-learned initialisation)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
