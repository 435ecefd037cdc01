"""PreferenceEstimator: a pure function ``(params, features) → predicted ratings``.

field embeddings → concatenation → MLP → rating, in two stages: ``encode`` (the embedding
lookups, giving ``Encoded``) and ``score`` (the MLP plus any additive parts). The object holds
only the architecture; every weight comes in the ``params`` dict, so nothing is swapped into
a shared module and one estimator serves any number of threads. Parameter names split into
*shared* (``embeddings.*``, updated by the outer loop only) and *fast* (the adapted group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from melu.config import FastGroup, ModelConfig
from melu.features import FeatureBatch, FeatureSpace
from melu.model import ranking
from melu.model.bags import bag_mean
from melu.model.collaborative import collaborative, part_shapes, user_state
from melu.model.init import initial_params
from melu.model.ranking import Bag

Params = dict[str, Tensor]
# an additive part of the prediction: (params, encoded rows) → (..., N)
Part = Callable[[Mapping[str, Tensor], "Encoded"], Tensor]


class Encoded(NamedTuple):
    """The embedding stage of rows that share one user per leading index (every task does).

    ``user`` (..., E_u): the user fields' embeddings, once per task; ``items`` (..., N, E_i):
    the item fields' embeddings per row. The first layer then costs E_i, not E_u + E_i,
    multiply-adds per row and weight: the user's share is computed once per task.
    """

    user: Tensor
    items: Tensor
    ids: Tensor  # (..., N) item-id feature indices (0: unknown; all 0 without an id field)


def is_embedding(name: str) -> bool:
    """Whether parameter ``name`` is an embedding table (an input of ``encode``)."""
    return name.startswith("embeddings.")


class PreferenceEstimator:
    """MeLU's user-preference estimator as a pure function of ``(params, features)``.

    One embedding table per field (multi-valued fields: the mean of their non-padding
    entries, as ``EmbeddingBag(mode="mean", padding_idx=0)``), user fields then item fields
    concatenated to (..., N, F·D), then Linear-ReLU layers of sizes ``config.hidden`` and a
    Linear output (..., N). Weights named ``embeddings.<field>.weight`` and
    ``mlp.<i>.weight`` / ``mlp.<i>.bias`` (i counts the ReLUs too, as ``nn.Sequential``).
    """

    def __init__(self, config: ModelConfig, space: FeatureSpace) -> None:
        self.config, self.space = config, space
        self.user_field_names = [f.name for f in space.user_fields]
        self.item_field_names = [f.name for f in space.item_fields]
        self.field_names = self.user_field_names + self.item_field_names
        self.multi = {f.name for f in space.fields if f.multi}
        widths = [self.embedding_width, *config.hidden, 1]
        self.widths = list(pairwise(widths))  # (in, out) per Linear
        self.linears = [
            (f"mlp.{2 * i}.weight", f"mlp.{2 * i}.bias") for i in range(len(self.widths))
        ]
        self.head_prefix = f"mlp.{2 * (len(self.widths) - 1)}."
        self.user_width = config.embedding_dim * len(self.user_field_names)
        # additive parts of the prediction beyond the MLP: score adds them and the batched
        # kernel differentiates their fast parameters by autograd
        self.factors = config.factors
        self.id_field = "item" if "item" in self.item_field_names else None
        self.parts: tuple[Part, ...] = (collaborative,) if self.factors else ()
        # the per-user parameters of the parts: used by ``parts`` only, and per task (T, ...)
        # they broadcast through ``score`` (the batched kernel relies on both)
        self.user_params = ("user.bias", "user.factor") if self.factors else ()
        # fast parameters the inner loss pulls towards their starting value (ridge around
        # the meta-learned prior, see ``melu.model.maml``): the user's bias and factor
        self.anchored = self.user_params if config.anchor else ()
        # the ranking head (``melu.model.ranking``): needs the rating part's user state and
        # item ids; trained after the rating part, never adapted per user
        self.ranking = config.ranking and bool(self.factors) and self.id_field is not None
        low, high = space.rating_scale
        self.rating_levels = round((high - low) / space.rating_step) + 1
        self._shapes: dict[str, torch.Size] | None = None

    @property
    def embedding_width(self) -> int:
        return self.config.embedding_dim * len(self.field_names)

    def shapes(self) -> dict[str, torch.Size]:
        """Every parameter's name → shape, in the model's (and the bundle's) order."""
        if self._shapes is None:  # adapt asks per call: built once (config and space fixed)
            self._shapes = self._all_shapes()
        return dict(self._shapes)

    def _all_shapes(self) -> dict[str, torch.Size]:
        dim = self.config.embedding_dim
        out = {f"embeddings.{f.name}.weight": torch.Size((f.size, dim)) for f in self.space.fields}
        for (w, b), (n_in, n_out) in zip(self.linears, self.widths, strict=True):
            out[w], out[b] = torch.Size((n_out, n_in)), torch.Size((n_out,))
        return {**out, **self.factor_shapes(), **self.rank_shapes()}

    def rank_shapes(self) -> dict[str, torch.Size]:
        """The ranking head's parameters (``rank.*``; none without a head)."""
        if not self.ranking:
            return {}
        ids = next(f.size for f in self.space.fields if f.name == self.id_field)
        return ranking.head_shapes(
            ids, self.rating_levels, self.user_width, self.factors, self.config.rank_factors
        )

    def rating_names(self) -> list[str]:
        """The parameters of the rating part (everything but the ranking head)."""
        return [n for n in self.shapes() if not n.startswith(ranking.PREFIX)]

    def factor_shapes(self) -> dict[str, torch.Size]:
        """The collaborative part's parameters (none without ``factors``)."""
        ids = next((f.size for f in self.space.fields if f.name == self.id_field), None)
        return part_shapes(self.factors, self.embedding_width, self.user_width, ids)

    def init_params(
        self,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        head: bool = True,
    ) -> Params:
        """Fresh initial parameters, drawn from torch's global RNG.

        Draws exactly what ``nn.Embedding`` / ``nn.EmbeddingBag`` / ``nn.Linear`` draw, in
        the order of ``shapes()`` (so a seeded run reproduces the historic module's values);
        the output bias starts at the rating scale's midpoint. ``head``: include the ranking
        head's starting values (``rank.*``, trained after the rating part; off for the
        meta-training of the rating part, which never touches them).
        """
        return initial_params(self, dtype, device, head=head)

    def encode_user(self, params: Mapping[str, Tensor], user: FeatureBatch) -> Tensor:
        """User fields → (...) indices  →  (..., E_u) embeddings (E_u = 0 without user fields)."""
        parts = [
            F.embedding(user[n], params[f"embeddings.{n}.weight"]) for n in self.user_field_names
        ]
        if parts:
            return torch.cat(parts, dim=-1)
        some = next(iter(params.values()))
        return some.new_zeros(0)

    def encode_items(
        self, params: Mapping[str, Tensor], features: FeatureBatch, *, bags: bool = False
    ) -> Tensor:
        """Item fields → (..., N) or (..., N, L) indices  →  (..., N, E_i) embeddings.

        ``bags``: multi-valued fields of (..., N, L) indices by ``bags.bag_mean`` (one
        fused op each way, the same mean; not vmappable or twice differentiable, so only for
        callers that need neither, as the packed training rows and the row-space kernel)."""
        parts = []
        for name in self.item_field_names:
            idx, weight = features[name], params[f"embeddings.{name}.weight"]
            if bags and name in self.multi and idx.dim() >= 2:
                parts.append(bag_mean(idx, weight))
                continue
            rows = F.embedding(idx, weight)  # (..., N[, L], D)
            if name in self.multi:
                # EmbeddingBag(mode="mean", padding_idx=0), written out so vmap and double
                # backward apply: mean over the non-padding entries, 0 if none.
                keep = (idx != 0).unsqueeze(-1).to(rows.dtype)  # (..., N, L, 1)
                rows = (rows * keep).sum(-2) / keep.sum(-2).clamp(min=1.0)
            parts.append(rows)
        return torch.cat(parts, dim=-1)

    def encode(
        self, params: Mapping[str, Tensor], features: FeatureBatch, *, bags: bool = False
    ) -> Encoded:
        """Features of rows that share one user per leading index → ``Encoded``.

        ``features``: field → (..., N) or (..., N, L) indices, N ≥ 1, the user fields
        repeating one value along N (as ``FeatureTables.gather`` / ``with_user`` build them).
        ``bags``: as ``encode_items``'s (once differentiable, not vmappable).
        """
        items = self.encode_items(params, features, bags=bags)
        user = self.encode_user(params, {n: features[n][..., 0] for n in self.user_field_names})
        if not self.user_field_names:
            user = items.new_zeros((*items.shape[:-2], 0))
        if self.id_field is not None:
            ids = features[self.id_field]
        else:
            ids = torch.zeros(items.shape[:-1], dtype=torch.long, device=items.device)
        return Encoded(user, items, ids)

    def score(self, params: Mapping[str, Tensor], encoded: Encoded) -> Tensor:
        """Predicted ratings (..., N) of encoded rows: the MLP plus the additive ``parts``.

        MLP weights are shared ((H, W), (H,)) or per task ((T, H, W), (T, H)) with a leading
        task dim T matching ``encoded``'s; plain broadcasting matmuls cover both.
        First layer: W₁·[u; xᵢ] + b₁ = (W₁ᵤ·u + b₁) + W₁ᵢ·xᵢ, the user's share once per task
        (the matmul layouts are those of the historic module, so seeded runs reproduce).
        """
        return self.with_parts(params, encoded, self.network(params, encoded))

    def with_parts(self, params: Mapping[str, Tensor], encoded: Encoded, out: Tensor) -> Tensor:
        """The network's output ``out`` (..., N) plus the additive ``parts``."""
        for part in self.parts:
            out = out + part(params, encoded)
        return out

    def network(self, params: Mapping[str, Tensor], encoded: Encoded) -> Tensor:
        """The MLP's output (..., N) alone (no parts); see ``score``."""
        user = self.user_layer(params, encoded.user).unsqueeze(-2)  # (..., 1, H)
        return self.network_rows(params, user, encoded.items)

    def first_items(self, params: Mapping[str, Tensor], items: Tensor) -> Tensor:
        """The first layer's item half W₁ᵢ·xᵢ (..., N, H) of item encodings (..., N, E_i)."""
        return items @ params[self.linears[0][0]][..., self.user_width :].mT

    def user_layer(self, params: Mapping[str, Tensor], user: Tensor) -> Tensor:
        """The first layer's user share W₁ᵤ·u + b₁ (..., H) of user embeddings (..., E_u)."""
        w0, b0 = self.linears[0]
        weight = params[w0][..., : self.user_width]
        return (user.unsqueeze(-2) @ weight.mT).squeeze(-2) + params[b0]

    def network_rows(
        self,
        params: Mapping[str, Tensor],
        user: Tensor,
        items: Tensor,
        first: Tensor | None = None,
    ) -> Tensor:
        """The MLP's output (..., N) of item embeddings ``items`` (..., N, E_i), given the
        first layer's user share ``user`` broadcasting against (..., N, H) (``user_layer``;
        per row, (N, H), for rows of many users packed together). ``first``: the rows'
        ``first_items`` (N, H) when the caller has them cached (a catalog's, at load)."""
        if first is None:
            first = self.first_items(params, items)
        h = first + user  # (..., N, H)
        reuse = not torch.is_grad_enabled()  # no graph: each layer's buffer is reused
        for w, b in self.linears[1:]:
            h = (h.relu_() if reuse else h.relu()) @ params[w].mT
            h = h.add_(params[b].unsqueeze(-2)) if reuse else h + params[b].unsqueeze(-2)
        return h.squeeze(-1)  # (..., N)

    def user_state(self, params: Mapping[str, Tensor], user: Tensor) -> Tensor:
        """The rating part's user bias and factor (..., 1 + k) (``collaborative.user_state``)."""
        return user_state(params, user)

    def bag(self, ids: Tensor, ratings: Tensor, mask: Tensor) -> Bag:
        """A support's item-id indices (T, L), ratings (T, L) and mask as a ranking ``Bag``."""
        low = self.space.rating_scale[0]
        levels = ranking.rating_levels(ratings, low, self.space.rating_step, self.rating_levels)
        return Bag(ids, levels, mask)

    def rank_score(
        self,
        params: Mapping[str, Tensor],
        encoded: Encoded,
        bag: Bag | None = None,
        network: Tensor | None = None,
    ) -> Tensor:
        """Ranking scores (T, N) of encoded rows, higher first: what orders a person's
        recommendations. With a ranking head: its scores given the (adapted) ``params`` and
        the support ``bag`` (none: an empty bag); without one, the predicted rating.
        ``encoded``: user (T, E_u), items (T, N, E_i) or shared (N, E_i) with ids (N,).
        ``network``: the MLP's output (T, N) when the caller has it (it does not depend on
        the fast user parameters, so it is the same before and after adaptation)."""
        if not self.ranking or not any(k.startswith(ranking.PREFIX) for k in params):
            if encoded.items.dim() == 2:  # shared candidate rows: broadcast over users
                t = encoded.user.shape[0]
                items = encoded.items.expand(t, *encoded.items.shape)
                encoded = Encoded(encoded.user, items, encoded.ids.expand(t, -1))
            return self.score(params, encoded)
        state = self.user_state(params, encoded.user)
        if bag is None:
            empty = encoded.ids.new_zeros((encoded.user.shape[0], 0))
            bag = Bag(empty, empty, empty.bool())
        if network is None:  # (T, N), broadcasting shared candidate rows
            network = self.network(params, encoded)
        rating = self.with_parts(params, encoded, network)
        return ranking.head_scores(params, encoded.user, state, encoded.ids, bag, rating)

    def predict(self, params: Mapping[str, Tensor], features: FeatureBatch) -> Tensor:
        """The model: ``score ∘ encode``, predicted ratings (..., N)."""
        return self.score(params, self.encode(params, features))

    def fast_names(self, group: FastGroup | None = None) -> list[str]:
        """Names of the parameters adapted per user for ``group`` (default: the config's)."""
        group = group or self.config.fast_params
        names = self.rating_names()
        if group == "all":
            return names
        if group == "head":
            return [n for n in names if n.startswith(self.head_prefix)]
        user = list(self.user_params)
        if group == "user":
            return user
        mlp = [n for n in names if n.startswith("mlp.")]
        return mlp + user if group == "user_mlp" else mlp
