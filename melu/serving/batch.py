"""Many people at once: check every request, adapt them together, score the catalog.

``recommend_many`` is ``Recommender.recommend`` for T requests in one pass. Every request
is checked before any work (a bad one raises ``InvalidInput`` at ``(i, ...)``: nothing is
half-answered). The people with ratings adapt together in one ``adapt`` call: their
supports are padded to the longest (padding rows masked out, so they add nothing to the
loss or the gradient), as a meta-batch is in training. The MLP's pass over the item
encodings computed at load runs ``SCORE_CHUNK`` people at a time (its activations stay in
cache), once per distinct set of user features when no MLP parameter adapts (it then
depends on nothing else). The rest is scored for a block of ``RANK_CHUNK`` people at a
time: the model's other parts, the ranking head, everyone's top k and the reasons behind
them as a few ops over the whole block, so what is left per person is naming their items.
Answers equal the one-at-a-time ones up to float rounding (tests/test_service_batch.py,
tests/test_items.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from melu.errors import InvalidInput
from melu.features import FeatureBatch
from melu.model import personal
from melu.model.items import catalog_rankings, catalog_ratings
from melu.model.linear import AffineExamples
from melu.model.maml import Examples
from melu.model.ranking import Bag
from melu.serving import results
from melu.serving.rows import Scores
from melu.serving.topk import top_rows_many
from melu.serving.types import Adaptation, Recommendations, Request, Scored

if TYPE_CHECKING:
    from melu.serving.recommender import Recommender

SCORE_CHUNK = 4  # people whose MLP passes run together: (4, I, H) activations near L2
RANK_CHUNK = 128  # people ranked together: the head, top k and reasons as ops over (128, I)


@dataclass(frozen=True)
class Checked:
    """One request after checking: its user's feature indices, rated catalog rows (R,)
    and ratings (R,), and its candidate rows (``None``: the whole catalog)."""

    request: Request
    user: dict[str, int]
    rated: list[int]
    values: list[float]
    rows: Tensor | None


def check(recommender: Recommender, requests: Sequence[Request]) -> list[Checked]:
    """Every request checked as ``recommend`` checks one; the first problem raises
    ``InvalidInput`` with the request's index in front of its location."""
    out = []
    features, catalog, scale = recommender.bundle.features, recommender.catalog, recommender.scale
    everyone = catalog.rated_many([r.ratings for r in requests], scale)  # None: a bad one
    for i, request in enumerate(requests):
        try:
            rows = recommender._candidates(request)
            user = features.user_indices(request.user)
            if everyone is None:  # find and name the first problem, as one request does
                found, values = catalog.rated(request.ratings, scale)
                rated = (found.tolist(), values)
            else:
                rated = everyone[i]
        except InvalidInput as exc:
            raise InvalidInput((i, *exc.loc), exc.value, exc.reason) from None
        out.append(Checked(request, user, *rated, rows))
    return out


def _users(recommender: Recommender, people: Sequence[Checked]) -> FeatureBatch:
    """The people's user features, field → (T,) indices."""
    device = recommender.device
    return {k: torch.tensor([p.user[k] for p in people], device=device) for k in people[0].user}


def _padded(recommender: Recommender, people: Sequence[Checked]) -> tuple[Tensor, Tensor, Tensor]:
    """The people's rated catalog rows, ratings and mask, padded to the longest (T, N):
    padding is catalog row 0, masked out."""
    sizes = np.array([len(p.rated) for p in people])
    mask = np.arange(sizes.max(initial=0)) < sizes[:, None]  # (T, N), row-major = in order
    rows = np.zeros(mask.shape, dtype=np.int64)
    ratings = np.zeros(mask.shape, dtype=np.float32)
    if mask.any():
        rows[mask] = np.concatenate([p.rated for p in people])
        ratings[mask] = np.concatenate([p.values for p in people])
    device = recommender.device
    return (
        torch.from_numpy(rows).to(device),
        torch.from_numpy(ratings).to(device),
        torch.from_numpy(mask).to(device),
    )


def _support(recommender: Recommender, people: Sequence[Checked]) -> Examples | AffineExamples:
    """The people's rated rows as one padded meta-batch (T, N) of model inputs: in the
    linear kernel's affine form from the cache when it applies, else their features."""
    rows, ratings, mask = _padded(recommender, people)
    encoder = recommender.encoder
    users = _users(recommender, people)
    if encoder.linear:
        user = _embedded(recommender, recommender.params, users, len(people))  # (T, E_u)
        return encoder.affine(recommender.params, user, rows, ratings, mask)
    encoded = [encoder({k: v[t] for k, v in users.items()}, rows[t]) for t in range(len(people))]
    inputs = {k: torch.stack([e[k] for e in encoded]) for k in encoded[0]}
    return Examples(inputs, ratings, mask)


def _adapt(
    recommender: Recommender, people: Sequence[Checked]
) -> tuple[dict[str, Tensor], list[Adaptation]]:
    """Fast params per person (T, ...) (the bundle's for those without ratings) and how
    each adaptation went; one batched ``adapt`` for everyone with ratings."""
    rec = recommender
    base = {k: rec.params[k].expand(len(people), *rec.params[k].shape) for k in rec.fast}
    infos = [Adaptation(0, None, None)] * len(people)
    rated = [t for t, p in enumerate(people) if len(p.rated)]
    if not rated or rec.steps == 0:
        return base, infos
    start = time.perf_counter()
    support = _support(rec, [people[t] for t in rated])
    params, losses = rec.adapt_tasks(support)
    index = torch.as_tensor(rated, device=rec.device)
    fast = {k: base[k].clone().index_copy_(0, index, params[k]) for k in rec.fast}
    seconds = time.perf_counter() - start  # the whole pass, reported with every person
    first, last = losses[:, 0].tolist(), losses[:, -1].tolist()
    for j, t in enumerate(rated):
        infos[t] = Adaptation(rec.steps, first[j], last[j], seconds)
    return fast, infos


def _bags(recommender: Recommender, chunk: Sequence[Checked]) -> Bag:
    """The chunk's rated items as one padded ranking bag (C, L)."""
    rows, values, mask = _padded(recommender, chunk)
    ids = recommender.encoder.bag(rows.flatten(), values.flatten()).ids.reshape(rows.shape)
    return recommender.model.bag(ids, values, mask)


def recommend_many(recommender: Recommender, requests: Sequence[Request]) -> list[Recommendations]:
    """``recommender.recommend(**request)`` for every request, computed together."""
    rec = recommender
    people = check(rec, requests)
    if not people:
        return []
    with rec._threads():
        fast, infos = _adapt(rec, people)
        with torch.no_grad():
            networks = _networks(rec, people)
        out = []
        for lo in range(0, len(people), RANK_CHUNK):
            hi = lo + RANK_CHUNK
            params = {**rec.params, **{k: v[lo:hi] for k, v in fast.items()}}
            network = None if networks is None else networks[lo:hi]
            out.extend(_answer(rec, people[lo:hi], params, infos[lo:hi], network))
    return out


def _networks(rec: Recommender, people: Sequence[Checked]) -> Tensor | None:
    """The MLP's output over the whole catalog (T, I) when no MLP parameter adapts (then it
    depends on the user fields alone): computed once per distinct set of user features,
    ``SCORE_CHUNK`` of them at a time, people with the same features sharing it. ``None``
    when each person's adapted MLP must run (``_rankings`` does) or without the cache."""
    if rec.encoder.cache is None or not rec.encoder.fixed_mlp:
        return None
    first: dict[tuple[int, ...], int] = {}  # user features → their row among the distinct
    which = [first.setdefault(tuple(p.user.values()), len(first)) for p in people]
    fields = list(people[0].user)
    users = {
        k: torch.tensor([f[j] for f in first], device=rec.device) for j, k in enumerate(fields)
    }
    user = _embedded(rec, rec.params, users, len(first))
    parts = [
        rec.encoder.catalog_network(rec.params, user[lo : lo + SCORE_CHUNK])
        for lo in range(0, len(user), SCORE_CHUNK)
    ]
    return torch.cat(parts)[torch.as_tensor(which, device=rec.device)]


def _embedded(rec: Recommender, params: dict[str, Tensor], users: FeatureBatch, n: int) -> Tensor:
    """``n`` people's user fields (field → (n,)) embedded, (n, E_u) (E_u = 0 without any)."""
    user = rec.model.encode_user(params, users)
    return user.expand(n, 0) if user.dim() == 1 else user


def _rankings(
    rec: Recommender, chunk: Sequence[Checked], params: dict[str, Tensor], bags: Bag | None,
    network: Tensor | None, per_person: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(predicted ratings, ranking scores) of the whole catalog (C, I) each for the chunk
    (its fast params (C, ...), or ``per_person`` of them — none: the bundle's own params;
    ``bags`` None: no ratings; ``network`` its MLP output (C, I) if shared): the ratings
    ``SCORE_CHUNK`` people at a time (the MLP's activations stay in cache), the head at once."""
    cache = rec.encoder.cache
    assert cache is not None
    own = rec.fast if per_person is None else per_person
    user = _embedded(rec, params, _users(rec, chunk), len(chunk))  # (C, E_u)
    ratings = []
    for lo in range(0, len(chunk), SCORE_CHUNK):
        hi = lo + SCORE_CHUNK
        mine = {**params, **{k: params[k][lo:hi] for k in own}}
        shared = None if network is None else network[lo:hi]
        ratings.append(catalog_ratings(rec.model, mine, cache, user[lo:hi], shared))
    return catalog_rankings(rec.model, params, cache, user, bags, rating=torch.cat(ratings))


def _shown(
    rec: Recommender, chunk: Sequence[Checked], params: dict[str, Tensor], bags: Bag,
    network: Tensor | None, rank: Tensor,
) -> Tensor:  # fmt: skip
    """The chunk's whole-catalog ranking scores ``rank`` (C, I) held to the head's
    personalisation rule (``personal.shown_scores``), as ``RowEncoder.rankings`` holds one
    person's: their no-ratings lists from the bundle's unadapted params."""
    keep = None if rec.rule_base is None else personal.kept_of_list(params, bags)
    if keep is None:
        return rank
    cache = rec.encoder.cache
    assert cache is not None
    none = _rankings(rec, chunk, rec.params, None, network, per_person=())[1]
    return personal.shown_scores(rank, cache.encoded.ids, bags, personal.list_of(none), keep)


def _answer(
    rec: Recommender, chunk: Sequence[Checked], params: dict[str, Tensor],
    infos: Sequence[Adaptation], network: Tensor | None,
) -> list[Recommendations]:  # fmt: skip
    """A chunk's answers: the whole catalog ranked for all of them at once (each person's
    candidates taken from there; per-person encodings when embeddings adapt)."""
    bags = _bags(rec, chunk)
    if rec.encoder.cache is None:  # embeddings adapt: each person's rows with their tables
        return [_alone(rec, p, params, bags, c, infos[c]) for c, p in enumerate(chunk)]
    with torch.no_grad():
        rating, rank = _rankings(rec, chunk, params, bags, network)
        shown = _shown(rec, chunk, params, bags, network, rank)
    out: list[Recommendations | None] = [None] * len(chunk)
    whole = [c for c, p in enumerate(chunk) if p.request.candidates is None]
    tops = _top_items(rec, [chunk[c] for c in whole], whole, rating, shown, bags)
    for c, items in zip(whole, tops, strict=True):
        out[c] = Recommendations(items, infos[c])
    for c, person in enumerate(chunk):
        if out[c] is None:  # candidates: ranked among themselves, as one request is
            pick = person.rows
            assert pick is not None
            scores = _scores(rec, person, params, bags, c, pick, rating[c, pick], rank[c, pick])
            out[c] = results.top(rec, person.request, scores, infos[c])
    return [r for r in out if r is not None]


def _top_items(
    rec: Recommender, people: Sequence[Checked], at: Sequence[int], rating: Tensor,
    rank: Tensor, bags: Bag,
) -> list[list[Scored]]:  # fmt: skip
    """The top k of the whole catalog for ``people`` (rows ``at`` of the chunk's ``rating``
    and ``rank`` (C, I) and ``bags``) as their ``Scored`` items, in the order and with the
    reasons of ``results.top``: everyone's top k, ratings and contributions in a few ops."""
    if not people:
        return []
    index = torch.as_tensor(at, device=rec.device)
    scores = rank[index]  # a copy: top_rows_many writes -inf over the excluded rows
    excluded = [(t, p.rated) for t, p in enumerate(people) if p.request.exclude_rated]
    pairs = None
    if any(len(rows) for _, rows in excluded):
        who = torch.as_tensor([t for t, rows in excluded for _ in rows], device=rec.device)
        pairs = (who, torch.as_tensor([r for _, rows in excluded for r in rows], device=rec.device))
    ks = torch.as_tensor([p.request.k for p in people], device=rec.device)
    person, row = top_rows_many(scores, ks, pairs)
    chunk_person = index[person]  # (M,) the picks' places in the chunk
    clamped = rating[chunk_person, row].clamp(*rec.scale).tolist()
    slots: list[list[int]] = [[] for _ in range(len(person))]
    if bags.ids.shape[-1]:  # someone has ratings: what each of their items adds to each pick
        bag = Bag(bags.ids[chunk_person], bags.levels[chunk_person], bags.mask[chunk_person])
        with torch.no_grad():
            added = rec.encoder.reasons(rec.params, row[:, None], bag)  # (M, 1, L)
        slots = results.strongest(added[:, 0])  # (M, L) → per pick
    counts = torch.bincount(person, minlength=len(people)).tolist()
    rows, out, lo = row.tolist(), [], 0
    for p, n in zip(people, counts, strict=True):
        why = results.named(rec, p.rated, p.values, slots[lo : lo + n])
        out.append(results.items(rec, rows[lo : lo + n], clamped[lo : lo + n], why))
        lo += n
    return out


def _scores(
    rec: Recommender, person: Checked, params: dict[str, Tensor], bags: Bag, c: int,
    rows: Tensor | None, rating: Tensor, rank: Tensor,
) -> Scores:  # fmt: skip
    """Person ``c`` of the chunk as one request's ``Scores`` of catalog ``rows`` (``None``:
    the whole catalog)."""
    mine = {**rec.params, **{k: params[k][c] for k in rec.fast}}
    rated = torch.as_tensor(person.rated, dtype=torch.long, device=rec.device)
    values = torch.tensor(person.values, device=rec.device)
    return Scores(rows, rating, rank, rated, values, mine, _own(bags, c, len(rated)))


def _own(bags: Bag, c: int, r: int) -> Bag:
    """Person ``c``'s own bag (1, r): the first ``r`` slots of the chunk's bags (C, L)."""
    return Bag(bags.ids[c : c + 1, :r], bags.levels[c : c + 1, :r], bags.mask[c : c + 1, :r])


def _alone(
    rec: Recommender, person: Checked, params: dict[str, Tensor], bags: Bag, c: int,
    info: Adaptation,
) -> Recommendations:  # fmt: skip
    """Person ``c`` of the chunk answered alone: their rows encoded with their own tables."""
    mine = {**rec.params, **{k: params[k][c] for k in rec.fast}}
    with torch.no_grad():
        who = rec.encoder.person(rec.params, person.request.user, catalog=False)
        bag = _own(bags, c, len(person.rated))
        rating, rank = rec.encoder.rankings(mine, who, person.rows, bag, rec.rule_base)
    scores = _scores(rec, person, params, bags, c, person.rows, rating, rank)
    return results.top(rec, person.request, scores, info)
