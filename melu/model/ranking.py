"""The ranking head: which movies this person will pick and love, over the whole catalog.

The rating part predicts *how* a user rates what they chose to rate; that rewards acclaimed
films and barely moves with a few ratings (issue 15). The head orders the catalog by the
log-odds that the user rates an item highly, as a sum of parts, each a function of
``(params, rows)`` like every other part:

- β_i + a_u·q_i: the item's ranking bias and factor (its id's rows; new items and ids
  hidden in training share one bias), a_u = A·[u; b_u; p_u] + a₀ from the user's
  demographics and the rating part's user bias and factor *after* the one ``adapt()``;
- π·log(1 + n_i): popularity, the id's count of training raters (the list of a user with
  no ratings yet);
- Σ_{j ∈ support} w(r_j)·B[j, i]: the rated items as a bag, weighted per rating level
  (a 1★ film counts against its neighbours), through a learned item–item matrix B;
- c·log(ε + mean_j P(i | j)): how often the raters of the user's movies also rated i;
- c_e·Σ_j w_e(r_j)·B_EASE[j, i]: EASE^R's closed-form item–item weights (λ chosen on the
  validation users); the episode's user left out exactly while training (Sherman–Morrison);
- c_l·Σ_j w_l(r_j)·B_liked[j, i]: the same closed form regressed on what the training
  users *liked* (rated ≥ 4), what the top-N protocol counts as relevant (its own λ);
- c_w·Σ_j w_w(r_j)·W[j, i]: RP³β's random walk item → user → item (Paudel et al. 2017),
  each step ∝ 1/degree^α, the landing item divided by its popularity^β (α, β chosen on
  the validation users): a graph part whose lists lean away from the most popular films;
- c_n·Σ_v w_v·Y[i, v]: the training users who rated what the user rated, each at
  w_v = (overlap / √(their count))^α, the K largest kept, voting for what they *liked*
  (user-kNN; α and K chosen on the validation users): the one part not linear in the
  support, where a user who shares several of the person's films counts far more;
- γ·r̂_i: the rating part's predicted rating after that ``adapt()`` (known ids only: a new
  item's comes from its content alone and orders new items no better than chance).

What is shown may then be held to a personalisation rule (``melu.model.personal``): of
the items the same person would see with no ratings (their no-ratings list), at most
SHOWN − κ stay within reach of the top 10, κ = ``rank.shared_cut`` per bucket (0: off; set
from ``train.rank_keep_shared``).

π, γ, c, c_e, c_l, c_w, c_n and λ_L (which scales β + a_u·q + the B-bag) are one per support-size
bucket (``SUPPORT_BUCKETS``), picked on validation users (``melu.training.rank_mix``).
β, q, A, B and w can be trained (``melu.training.rank_train``) by the multinomial
likelihood of each episode's held-out items (Mult-VAE's loss), the rating part fixed, so
the rating error is untouched. Parameters are named ``rank.*``; none is adapted per user.
The counted or solved statistics come from ``melu.model.ranking_stats``; the reasons
behind a recommendation from ``melu.model.reasons``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

PREFIX = "rank."
# the mixing weights of the head's parts (popularity, predicted rating, co-occurrence, EASE^R)
# are one per support size bucket: a user with no ratings is ordered by popularity and the
# adapted rating; with ten ratings the item–item parts say much more. Bucket b holds the
# support sizes n with SUPPORT_BUCKETS[b] <= n < SUPPORT_BUCKETS[b + 1].
SUPPORT_BUCKETS = (0, 1, 2, 4, 8)


class Bag(NamedTuple):
    """A batch of supports as the ranking head sees them (T users, L slots).

    ``ids`` (T, L) item-id feature indices (0: unknown/new, ignored); ``levels`` (T, L)
    rating-level indices (0 = the lowest rating); ``mask`` (T, L) bool, false on padding.
    ``rated``: only while training on a training user's episode, the ids of all their
    training ratings, so the co-occurrence statistics leave that user out (see
    ``cooccurrence_scores``); never at serving or evaluation (those users are not in them).
    """

    ids: Tensor
    levels: Tensor
    mask: Tensor
    rated: Tensor | None = None  # (T, V) 1 on every id the user rated in training (or None)


def head_shapes(
    n_ids: int, n_levels: int, user_width: int, factors: int, rank: int
) -> dict[str, torch.Size]:
    """The head's parameters: ``n_ids`` item-id vocabulary (0 unknown), ``n_levels``
    rating levels, the user embedding width, the rating part's ``factors``, head rank."""
    return {
        "rank.item_item": torch.Size((n_ids, n_ids)),
        "rank.level_weight": torch.Size((n_levels,)),
        "rank.rating_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.item_bias": torch.Size((n_ids,)),
        "rank.item_factor": torch.Size((n_ids, rank)),
        "rank.unknown_bias": torch.Size((1,)),
        "rank.cooccurrence": torch.Size((n_ids, n_ids)),
        "rank.item_count": torch.Size((n_ids,)),
        "rank.cooc_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.pop_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.learned_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.ease": torch.Size((n_ids, n_ids)),
        "rank.ease_level": torch.Size((n_levels,)),
        "rank.ease_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.liked": torch.Size((n_ids, n_ids)),
        "rank.liked_level": torch.Size((n_levels,)),
        "rank.liked_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.walk": torch.Size((n_ids, n_ids)),
        "rank.walk_level": torch.Size((n_levels,)),
        "rank.walk_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.shared_cut": torch.Size((len(SUPPORT_BUCKETS),)),
        # the training users as neighbours: their last dimension is how many there are
        # (0 in a fresh model; ``FREE_LAST``)
        "rank.neighbour_rated": torch.Size((n_ids, 0)),
        "rank.neighbour_liked": torch.Size((n_ids, 0)),
        "rank.neighbour_norm": torch.Size((0,)),
        "rank.neighbour_alpha": torch.Size((1,)),
        "rank.neighbour_keep": torch.Size((1,)),
        "rank.neighbour_weight": torch.Size((len(SUPPORT_BUCKETS),)),
        "rank.user.weight": torch.Size((rank, user_width + factors + 1)),
        "rank.user.bias": torch.Size((rank,)),
    }


def init_head(shapes: Mapping[str, torch.Size], popularity: Tensor, seed: int) -> dict[str, Tensor]:
    """Initial head parameters from their own seeded generator (the rating part's draws
    are unchanged): B = 0, w = 1, π = 1 and β = 0, so the start orders by popularity
    (``popularity`` (n_ids,): each id's training count, later ``rank.item_count``), small
    random item factors and user map."""
    gen = torch.Generator().manual_seed(seed)
    out = {name: torch.zeros(shape) for name, shape in shapes.items()}
    out["rank.level_weight"].fill_(1.0)
    out["rank.cooc_weight"].fill_(1.0)
    out["rank.ease_level"].fill_(1.0)
    out["rank.liked_level"].fill_(1.0)
    out["rank.walk_level"].fill_(1.0)
    out["rank.neighbour_alpha"].fill_(1.0)
    out["rank.item_count"] = popularity.float()
    out["rank.pop_weight"].fill_(1.0)
    out["rank.learned_weight"].fill_(1.0)
    for name in ("rank.item_factor", "rank.user.weight"):
        out[name] = torch.randn(shapes[name], generator=gen) * 0.01
    return out


def bucket_weight(weights: Tensor, bag: Bag) -> Tensor:
    """(T, 1): each user's entry of a per-support-size-bucket weight ``weights`` (B,) by the
    size of their support (its unmasked slots); a single weight (1,) applies to all."""
    if len(weights) == 1:
        return weights.expand(len(bag.mask)).unsqueeze(-1)
    lookup = _bucket_of_size(bag.mask.device)
    size = bag.mask.sum(-1).clamp(max=len(lookup) - 1)
    return weights[lookup[size]].unsqueeze(-1)


_BUCKET_OF_SIZE: dict[torch.device, Tensor] = {}


def _bucket_of_size(device: torch.device) -> Tensor:
    """(SUPPORT_BUCKETS[-1] + 1,) long: the bucket of each support size up to the last
    edge (larger sizes clamp to it), built once per device (a request asks 7 times)."""
    if device not in _BUCKET_OF_SIZE:
        sizes = torch.arange(SUPPORT_BUCKETS[-1] + 1)
        edges = torch.tensor(SUPPORT_BUCKETS[1:])
        _BUCKET_OF_SIZE[device] = torch.bucketize(sizes, edges, right=True).to(device)
    return _BUCKET_OF_SIZE[device]


def user_vector(params: Mapping[str, Tensor], user: Tensor, state: Tensor) -> Tensor:
    """a_u (..., k_r) from the user's embeddings ``user`` (..., E_u) and the rating part's
    adapted user bias and factor ``state`` (..., 1 + k)."""
    x = torch.cat([user, state], dim=-1)
    return x @ params["rank.user.weight"].mT + params["rank.user.bias"]


def item_terms(params: Mapping[str, Tensor], ids: Tensor) -> Tensor:
    """(β_i, q_i) (..., N, 1 + k_r) of items with id indices ``ids`` (..., N): a known id's
    own rows; unknown ids (0: new items, and ids hidden in training) share one learned
    bias and no factor. (A content estimate for them, trained on hidden ids, ranked the
    validation users' new items below chance, so the head has none; and ordering them by the
    rating part's content-based predicted rating scored below the tie order every baseline
    gives, so that does not enter either: new items tie, in catalog order.)"""
    own = torch.cat(
        [params["rank.item_bias"][ids].unsqueeze(-1), params["rank.item_factor"][ids]], dim=-1
    )
    unknown = torch.cat([params["rank.unknown_bias"], own.new_zeros(own.shape[-1] - 1)])
    return torch.where((ids != 0).unsqueeze(-1), own, unknown)


def rows_of(matrix: Tensor, ids: Tensor) -> Tensor:
    """``matrix[ids]`` (..., V): the rows of an item–item ``matrix`` (V', V) for ``ids``
    (...), as an embedding lookup (for a block of bags ~4x faster than advanced indexing,
    and no slower for one; the same values, and the same gradient, summed in the same
    order)."""
    return F.embedding(ids, matrix)


def bag_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """Σ_j w(r_j)·B[j, i] (T, N) of each user's bag against items ``ids`` (T, N) or (N,).

    Unknown ids (0) on either side contribute nothing; a bag item never scores itself.
    """
    weight = params["rank.level_weight"][bag.levels] * (bag.mask & (bag.ids != 0))  # (T, L)
    rows = rows_of(params["rank.item_item"], bag.ids)  # (T, L, V)
    per_id = (weight.unsqueeze(-1) * rows).sum(-2)  # (T, V)
    self_term = torch.zeros_like(per_id).scatter_add_(
        -1, bag.ids, weight * rows.gather(-1, bag.ids.unsqueeze(-1)).squeeze(-1)
    )  # what each bag item gives its own column (B's diagonal), removed below
    per_id = per_id - self_term
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(per_id), -1)
    return per_id.gather(-1, targets) * (targets != 0).to(per_id.dtype)


def head_scores(
    params: Mapping[str, Tensor],
    user: Tensor,
    state: Tensor,
    ids: Tensor,
    bag: Bag,
    rating: Tensor,
    terms: Tensor | None = None,
) -> Tensor:
    """Ranking scores s (T, N): ``user`` (T, E_u), ``state`` (T, 1 + k), the items' ids
    (T, N) or (N,), the supports ``bag`` and
    the rating part's predicted ratings ``rating`` (T, N) after adaptation (γ·r̂ joins).
    ``terms``: the items' ``item_terms`` when the caller has them cached (a catalog's)."""
    if terms is None:
        terms = item_terms(params, ids)  # (T|-, N, 1 + k_r)
    a = user_vector(params, user, state)  # (T, k_r)
    if terms.dim() == 3:
        interaction = (terms[..., 1:] * a.unsqueeze(-2)).sum(-1)
    else:
        interaction = a @ terms[:, 1:].mT
    # new items (unknown id 0) get no γ·r̂: their predicted rating comes from content alone,
    # and ordering them by it scored below the tie every baseline gives (RESULTS.md)
    predicted = bucket_weight(params["rank.rating_weight"], bag) * rating
    predicted = predicted * (ids != 0).to(rating.dtype)
    popular = bucket_weight(params["rank.pop_weight"], bag) * popularity(params, bag, ids)
    together = (
        cooccurrence_scores(params, bag, ids)
        + ease_scores(params, bag, ids)
        + liked_scores(params, bag, ids)
        + walk_scores(params, bag, ids)
        + neighbour_scores(params, bag, ids)
    )
    learned = terms[..., 0] + interaction + bag_scores(params, bag, ids)
    learned = bucket_weight(params["rank.learned_weight"], bag) * learned
    return learned + popular + predicted + together


def popularity(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """log(1 + n_i) (T|-, N): each item's count of training raters; with ``bag.rated`` (a
    training user's episode) the user is left out of the counts, as in the other parts."""
    count = params["rank.item_count"][ids]
    if bag.rated is not None:
        count = (count - bag.rated.gather(-1, ids.expand(len(bag.rated), -1))).clamp(min=0.0)
    return torch.log1p(count)


NEIGHBOURS = (
    "rank.neighbour_rated", "rank.neighbour_liked", "rank.neighbour_norm",
    "rank.neighbour_alpha", "rank.neighbour_keep", "rank.neighbour_weight",
)  # fmt: skip
# counted or solved from the training ratings, or picked on validation users: never trained
STATISTICS = (
    "rank.cooccurrence", "rank.item_count", "rank.ease", "rank.learned_weight", "rank.liked",
    "rank.liked_level", "rank.liked_weight", "rank.shared_cut", "rank.walk", "rank.walk_level",
    "rank.walk_weight", *NEIGHBOURS,
)  # fmt: skip
# parts added after heads were first saved: a bundle without them loads with them at 0,
# which scores exactly as the head it was saved with (``melu.bundle``)
LATER = (
    "rank.liked", "rank.liked_level", "rank.liked_weight", "rank.shared_cut", "rank.walk",
    "rank.walk_level", "rank.walk_weight", *NEIGHBOURS,
)  # fmt: skip
# whose last dimension is the number of training users, set by the data, not the model
FREE_LAST = ("rank.neighbour_rated", "rank.neighbour_liked", "rank.neighbour_norm")


EPSILON = 1e-3  # floor of the mean co-occurrence rate inside its log


def cooccurrence_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c · log(ε + mean_{j ∈ bag} P[j, i]) (T, N): how often the raters of the user's movies
    also rated item i ("people who rated j also rated i", item-kNN's and a heavily
    regularised EASE's signal), its weight c learned. With ``bag.rated`` the counts leave
    the user out: P'[j, i] = (n_j·P[j, i] − x_i) / (n_j − 1). An empty bag gives 0."""
    share, count = params["rank.cooccurrence"], params["rank.item_count"]
    keep = (bag.mask & (bag.ids != 0)).to(share.dtype)  # (T, L)
    rows = rows_of(share, bag.ids)  # (T, L, V)
    if bag.rated is not None:
        n = count[bag.ids].unsqueeze(-1)  # (T, L, 1)
        rows = ((rows * n - bag.rated.unsqueeze(-2)) / (n - 1).clamp(min=1.0)).clamp(min=0.0)
    mean = (rows * keep.unsqueeze(-1)).sum(-2) / keep.sum(-1, keepdim=True).clamp(min=1.0)
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(mean), -1)
    value = torch.log(EPSILON + mean.gather(-1, targets)) - torch.log(torch.tensor(EPSILON))
    has_bag = (keep.sum(-1, keepdim=True) > 0).to(share.dtype)
    weight = bucket_weight(params["rank.cooc_weight"], bag)
    return weight * value * has_bag * (targets != 0).to(share.dtype)


def ease_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c_e · Σ_j w_e(r_j)·B[j, i] (T, N): EASE^R's item–item weights B from the training
    ratings, the support weighted by learned rating-level weights, scaled by learned c_e.

    B[j, i] = −P[j, i] / P[i, i] (j ≠ i). With ``bag.rated`` (x, a training user's ids)
    the solve leaves that user out exactly: G − xxᵀ is a rank-one change, so by
    Sherman–Morrison P' = P + yyᵀ / (1 − xᵀy) with y = P x."""
    prec = params["rank.ease"]
    weight = params["rank.ease_level"][bag.levels] * (bag.mask & (bag.ids != 0))  # (T, L)
    mixed = (weight.unsqueeze(-1) * rows_of(prec, bag.ids)).sum(-2)  # (T, V): Σ_j w_j P[j, :]
    diag = prec.diagonal().expand_as(mixed)
    if bag.rated is not None:
        y = bag.rated @ prec  # (T, V)
        denom = 1.0 - (bag.rated * y).sum(-1, keepdim=True)  # (T, 1) > 0
        wy = (weight * y.gather(-1, bag.ids)).sum(-1, keepdim=True)  # (T, 1)
        mixed = mixed + wy * y / denom
        diag = diag + y * y / denom
    scores = -mixed / torch.where(diag > 0, diag, 1.0)  # P is positive definite (0: unfit)
    scores = scores.scatter_add(-1, bag.ids, weight)  # B's diagonal is 0: undo j = i
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(scores), -1)
    value = scores.gather(-1, targets) * (targets != 0).to(scores.dtype)
    return bucket_weight(params["rank.ease_weight"], bag) * value


def liked_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c_l · Σ_j w_l(r_j)·B_liked[j, i] (T, N): the item–item weights regressed on what the
    training users liked (``ranking_stats.liked_weights``; zero diagonal), the support
    weighted by rating-level weights w_l, at the bucket's weight c_l (``picked_scores``)."""
    return picked_scores(params, bag, ids, "liked")


def walk_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c_w · Σ_j w_w(r_j)·W[j, i] (T, N): RP³β's walk weights (``ranking_stats.walk_weights``;
    zero diagonal), the support weighted by rating-level weights w_w, at the bucket's
    weight c_w (``picked_scores``)."""
    return picked_scores(params, bag, ids, "walk")


PICKED = ("liked", "walk")  # the item–item parts whose matrix is solved once, never trained


def picked_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor, part: str) -> Tensor:
    """c · Σ_j w(r_j)·M[j, i] (T, N) of the picked item–item part ``part`` (one of
    ``PICKED``): its matrix M = ``rank.<part>``, level weights ``rank.<part>_level`` and
    bucket weights ``rank.<part>_weight``.

    Picked, never trained: on a training user's episode (``bag.rated``) it scores 0,
    because M was computed from that user's own held-out ratings."""
    matrix = params[f"rank.{part}"]
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(bag.mask), -1)
    if bag.rated is not None:
        return targets.new_zeros(targets.shape, dtype=matrix.dtype)
    weight = params[f"rank.{part}_level"][bag.levels] * (bag.mask & (bag.ids != 0))  # (T, L)
    per_id = (weight.unsqueeze(-1) * rows_of(matrix, bag.ids)).sum(-2)  # (T, V)
    value = per_id.gather(-1, targets) * (targets != 0).to(per_id.dtype)
    return bucket_weight(params[f"rank.{part}_weight"], bag) * value


def neighbour_scores(params: Mapping[str, Tensor], bag: Bag, ids: Tensor) -> Tensor:
    """c_n · Σ_v w_v·Y[i, v] (T, N): user-kNN over the training users (V of them).

    X = ``rank.neighbour_rated`` (V_ids, V) is 1 where a training user rated an id, Y =
    ``rank.neighbour_liked`` (V_ids, V) where they liked it (scaled so that weight 1 puts
    the top validation item at +5 logits), ``rank.neighbour_norm`` (V,) √(their count).
    The overlap of each bag with every training user, o_v = Σ_j X[j, v] (known ids j of
    the bag, each once), gives w_v = (o_v / norm_v)^α (α = ``rank.neighbour_alpha``), of
    which each user keeps the K = ``rank.neighbour_keep`` largest (0: all).

    Picked, never trained: on a training user's episode (``bag.rated``) it scores 0 (the
    user is among the neighbours), as does a head without neighbours (V = 0)."""
    liked = params["rank.neighbour_liked"]
    targets = ids if ids.dim() == 2 else ids.unsqueeze(0).expand(len(bag.mask), -1)
    if bag.rated is not None or liked.shape[-1] == 0:
        return targets.new_zeros(targets.shape, dtype=liked.dtype)
    w = neighbour_votes(params, bag).weight
    per_id = w @ liked.mT  # (T, V_ids)
    value = per_id.gather(-1, targets) * (targets != 0).to(per_id.dtype)
    return bucket_weight(params["rank.neighbour_weight"], bag) * value


class Votes(NamedTuple):
    """The training users' votes for a batch of bags: ``weight`` w (T, V) (0 beyond the K
    kept), ``overlap`` o (T, V) how many of the bag's ids each rated, ``first`` (T, L) the
    bag slots that count (known ids, each id once)."""

    weight: Tensor
    overlap: Tensor
    first: Tensor


def neighbour_votes(params: Mapping[str, Tensor], bag: Bag) -> Votes:
    """w_v = (o_v / norm_v)^α of every training user, the K largest per bag kept
    (``neighbour_scores``)."""
    rated = params["rank.neighbour_rated"]
    first = _first_of_each(bag.ids, bag.mask & (bag.ids != 0))  # a repeated id counts once
    overlap = (first.to(rated.dtype).unsqueeze(-1) * rows_of(rated, bag.ids)).sum(-2)  # (T, V)
    w = (overlap / params["rank.neighbour_norm"]).pow(params["rank.neighbour_alpha"])
    w = w * (overlap > 0).to(w.dtype)  # no overlap, no vote (also when α = 0)
    k = int(params["rank.neighbour_keep"])
    if 0 < k < w.shape[-1]:
        value, index = w.topk(k, dim=-1)
        w = torch.zeros_like(w).scatter_(-1, index, value)
    return Votes(w, overlap, first)


def _first_of_each(ids: Tensor, keep: Tensor) -> Tensor:
    """(T, L) bool: ``keep`` and no earlier kept slot of the row holds the same id."""
    same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & keep.unsqueeze(-2)  # (T, L, L) [l, l']
    earlier = torch.ones(ids.shape[-1], ids.shape[-1], dtype=torch.bool, device=ids.device)
    earlier = earlier.tril(-1)  # l' < l
    return keep & ~(same & earlier).any(-1)


def rating_levels(ratings: Tensor, low: float, step: float, n_levels: int) -> Tensor:
    """Rating values (...) → level indices 0..n_levels-1 (clamped)."""
    level = torch.round((ratings - low) / step).long()
    return level.clamp(0, n_levels - 1)
