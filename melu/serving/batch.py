"""Many people at once: check every request, adapt them together, score the catalog.

``recommend_many`` is ``Recommender.recommend`` for T requests in one pass. Every request
is checked before any work (a bad one raises ``InvalidInput`` at ``(i, ...)``: nothing is
half-answered). The people with ratings adapt together in one
``adapt(..., kernel="batched")`` call: their supports are padded to the longest (padding
rows masked out, so they add nothing to the loss or the gradient), as a meta-batch is in
training. The catalog is then scored for a chunk of users at a time with their adapted
MLPs (T, ...) over the item encodings computed at load. Answers equal the one-at-a-time
ones up to float rounding (tests/test_service_batch.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from melu.errors import InvalidInput
from melu.features import FeatureBatch
from melu.model.linear import AffineExamples
from melu.model.maml import Examples
from melu.model.ranking import Bag
from melu.serving import results
from melu.serving.rows import Scores
from melu.serving.topk import top_rows
from melu.serving.types import Adaptation, Recommendations, Request

if TYPE_CHECKING:
    from melu.serving.recommender import Recommender

SCORE_CHUNK = 4  # users scored together: (4, I, H) activations near L2 (fastest on 2-core EPYC)


@dataclass(frozen=True)
class Checked:
    """One request after checking: its user features, rated rows (R,), values and candidates."""

    request: Request
    user: FeatureBatch
    rated: Tensor
    values: Tensor
    rows: Tensor | None  # None: the whole catalog


def check(recommender: Recommender, requests: Sequence[Request]) -> list[Checked]:
    """Every request checked as ``recommend`` checks one; the first problem raises
    ``InvalidInput`` with the request's index in front of its location."""
    out = []
    for i, request in enumerate(requests):
        try:
            rows = recommender._candidates(request)
            user = recommender.encoder.user(request.user)
            found, values = recommender.catalog.rated(request.ratings, recommender.scale)
        except InvalidInput as exc:
            raise InvalidInput((i, *exc.loc), exc.value, exc.reason) from None
        device = recommender.device
        rated = torch.as_tensor(found, device=device)
        out.append(Checked(request, user, rated, torch.tensor(values, device=device), rows))
    return out


def _padded(recommender: Recommender, people: Sequence[Checked]) -> tuple[Tensor, Tensor, Tensor]:
    """The people's rated catalog rows, ratings and mask, padded to the longest (T, N):
    padding is catalog row 0, masked out."""
    n = max(len(p.rated) for p in people)
    device = recommender.device
    rows = torch.zeros(len(people), n, dtype=torch.long, device=device)
    ratings = torch.zeros(len(people), n, device=device)
    mask = torch.zeros(len(people), n, dtype=torch.bool, device=device)
    for t, person in enumerate(people):
        r = len(person.rated)
        rows[t, :r], ratings[t, :r], mask[t, :r] = person.rated, person.values, True
    return rows, ratings, mask


def _support(recommender: Recommender, people: Sequence[Checked]) -> Examples | AffineExamples:
    """The people's rated rows as one padded meta-batch (T, N) of model inputs: in the
    linear kernel's affine form from the cache when it applies, else their features."""
    rows, ratings, mask = _padded(recommender, people)
    encoder = recommender.encoder
    if encoder.linear:
        users = {k: torch.stack([p.user[k] for p in people]) for k in people[0].user}
        user = recommender.model.encode_user(recommender.params, users)  # (T, E_u)
        if user.dim() == 1:  # no user fields
            user = user.expand(len(people), 0)
        return encoder.affine(recommender.params, user, rows, ratings, mask)
    encoded = [encoder(p.user, rows[t]) for t, p in enumerate(people)]
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


def _rank_catalog(
    recommender: Recommender, chunk: Sequence[Checked], catalog: Tensor
) -> list[Tensor]:
    """Each person's top k catalog rows from their ranking scores (C, I), in the order of
    ``results.top`` (``top_rows``: stable, ties by catalog order, rated rows left out when excluded)."""
    scores = catalog.clone()  # top_rows writes -inf over the excluded rows
    out = []
    for c, person in enumerate(chunk):
        excluded = person.rated if person.request.exclude_rated and len(person.rated) else None
        out.append(top_rows(scores[c], person.request.k, excluded))
    return out


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
        out = []
        for lo in range(0, len(people), SCORE_CHUNK):
            chunk = people[lo : lo + SCORE_CHUNK]
            out.extend(_answer(rec, chunk, fast, infos, lo))
    return out


def _contributions(rec: Recommender, ranked: list[Tensor], bags: Bag) -> Tensor:
    """What each rated item adds to each person's top rows, (C, K, L) for the chunk at once
    (rows padded to the longest top list K with row 0, bags to L; both pads add 0)."""
    rows = torch.zeros(len(ranked), max(len(r) for r in ranked), dtype=torch.long)
    for c, top in enumerate(ranked):
        rows[c, : len(top)] = top
    with torch.no_grad():
        return rec.encoder.reasons(rec.params, rows.to(rec.device), bags)


def _answer(
    rec: Recommender, chunk: Sequence[Checked], fast: dict[str, Tensor],
    infos: Sequence[Adaptation], lo: int,
) -> list[Recommendations]:  # fmt: skip
    """A chunk's answers: the whole catalog ranked for all of them at once (each person's
    candidates, or per-person encodings when embeddings adapt, taken from there)."""
    params = {**rec.params, **{k: v[lo : lo + len(chunk)] for k, v in fast.items()}}
    users = {k: torch.stack([p.user[k] for p in chunk]) for k in chunk[0].user}
    bags = _bags(rec, chunk)
    with torch.no_grad():
        both = rec.encoder.catalog_rankings(params, users, bags)  # or None
    ranked = _rank_catalog(rec, chunk, both[1]) if both is not None else None
    added = _contributions(rec, ranked, bags) if ranked is not None else None
    out = []
    for c, person in enumerate(chunk):
        info = infos[lo + c]
        mine = {**rec.params, **{k: v[lo + c] for k, v in fast.items()}}
        r = len(person.rated)  # the person's own bag: the first r slots of the chunk's
        bag = Bag(bags.ids[c : c + 1, :r], bags.levels[c : c + 1, :r], bags.mask[c : c + 1, :r])
        if both is not None:
            rows = ranked[c] if ranked is not None and person.request.candidates is None else None
            pick = rows if rows is not None else person.rows
            rating, rank = both[0][c, pick], both[1][c, pick]
        else:  # embeddings adapt: each person's rows are encoded with their tables
            rows, pick = None, person.rows
            with torch.no_grad():
                who = rec.encoder.person(rec.params, person.request.user, catalog=False)
                rating, rank = rec.encoder.rankings(mine, who, pick, bag)
        scores = Scores(pick, rating, rank, person.rated, person.values, mine, bag)
        if rows is not None:  # already the top k in order
            mine_added = None if added is None else added[c, : len(rows)]
            out.append(
                Recommendations(results.describe(rec, rows, rating, scores, mine_added), info)
            )
        else:
            out.append(results.top(rec, person.request, scores, info))
    return out
