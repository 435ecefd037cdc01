"""The request near its floor equals the plain path: cached catalog parts, the closed-form
inner step and the top k without a full sort change no answer.

The plain path is ``Recommender(precompute_items=False)``: every candidate embedded per
request and the inner step by autograd (the batched kernel). The served one reads the
``ItemCache`` built at load and adapts by ``kernel="linear"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from melu.model.estimator import Encoded
from melu.model.items import catalog_rankings
from melu.serving import Recommender
from melu.serving.topk import top_rows, top_rows_many

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

PEOPLE = [
    ({"gender": "F", "age": 25, "occupation": "student"}, [(50, 5.0), (181, 4.0), (1, 2.0)]),
    ({"gender": "M", "age": 56, "zip": "94110"}, [(258, 1.0), (100, 5.0), (7, 3.0), (9, 4.5)]),
    (None, [(50, 1.0)]),
    ({"occupation": "artist"}, []),
]


@pytest.fixture(scope="module")
def plain(bundle_path: Path) -> Recommender:
    return Recommender.from_bundle(bundle_path, onboarding=False, threads=1, precompute_items=False)


def test_the_served_path_is_the_cached_closed_form_one(
    recommender: Recommender, plain: Recommender
) -> None:
    assert recommender.kernel == "linear" and recommender.encoder.cache is not None
    assert plain.kernel == "batched" and plain.encoder.cache is None


@pytest.mark.parametrize("exclude", [True, False])
def test_recommendations_equal_the_plain_path(
    recommender: Recommender, plain: Recommender, exclude: bool
) -> None:
    """Same items in the same order (k = 50 and the whole catalog), predicted ratings and
    support losses within 1e-5."""
    for user, ratings in PEOPLE:
        for k in (50, recommender.n_items - len(ratings)):
            got = recommender.recommend(user, ratings, k=k, exclude_rated=exclude)
            want = plain.recommend(user, ratings, k=k, exclude_rated=exclude)
            assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
            for a, b in zip(got.items, want.items, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-5)
                assert [r.item_id for r in a.because] == [r.item_id for r in b.because]
            for name in ("support_loss_before", "support_loss_after"):
                x, y = getattr(got.adaptation, name), getattr(want.adaptation, name)
                assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-5)


def test_candidates_and_predictions_equal_the_plain_path(
    recommender: Recommender, plain: Recommender
) -> None:
    user, ratings = PEOPLE[1]
    ids = [1, 2, 50, 100, 1682, 313, 7]
    got = recommender.recommend(user, ratings, k=4, candidates=ids, exclude_rated=False)
    want = plain.recommend(user, ratings, k=4, candidates=ids, exclude_rated=False)
    assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
    a, _ = recommender.predict(user, ratings, ids)
    b, _ = plain.predict(user, ratings, ids)
    assert a == pytest.approx(b, abs=1e-5)


def test_closed_form_adaptation_equals_autograd_on_the_bundle(recommender: Recommender) -> None:
    """float32 on the trained bundle: the served support (cached encodings and MLP outputs)
    adapted in closed form == the features adapted by the batched kernel's autograd."""
    enc = recommender.encoder
    for user, ratings in PEOPLE[:3]:
        found, values = recommender.catalog.rated(ratings, recommender.scale)
        rated, values_t = torch.as_tensor(found), torch.tensor(values)
        person = enc.person(recommender.params, user, catalog=True)
        served = enc.support(recommender.params, person, rated, values_t)
        features = enc.support(recommender.params, person._replace(user=None), rated, values_t)
        fast, losses = recommender.adapt_tasks(served)
        recommender.kernel = "batched"
        try:
            slow, slow_losses = recommender.adapt_tasks(features)
        finally:
            recommender.kernel = "linear"
        assert (losses - slow_losses).abs().max() < 1e-5
        for k in recommender.fast:
            assert (fast[k] - slow[k]).abs().max() < 1e-6, k
            assert not torch.equal(fast[k][0], recommender.params[k])  # it adapted


def test_cached_catalog_scores_equal_rank_score(recommender: Recommender) -> None:
    """T people at once over the cache == ``rank_score`` on the uncached encoded rows."""
    model, params, cache = recommender.model, recommender.params, recommender.encoder.cache
    assert cache is not None
    users = {"gender": torch.tensor([1, 2, 0]), "age": torch.tensor([3, 0, 5])}
    users |= {k: torch.zeros(3, dtype=torch.long) for k in ("occupation", "zip")}
    fast = {k: params[k] + 0.1 * torch.randn(3, *params[k].shape) for k in recommender.fast}
    mine = {**params, **fast}
    bag = model.bag(torch.tensor([[5, 9], [0, 3], [7, 7]]), torch.tensor([[5.0, 1], [3, 4], [2, 2]]),
                    torch.tensor([[True, True], [True, False], [True, False]]))  # fmt: skip
    with torch.no_grad():
        user = model.encode_user(params, users)
        rating, rank = catalog_rankings(model, mine, cache, user, bag)
        encoded = Encoded(user, cache.encoded.items, cache.encoded.ids)
        want = model.rank_score(mine, encoded, bag)
        rows = cache.encoded.items.expand(3, -1, -1)
        want_rating = model.score(mine, Encoded(user, rows, cache.encoded.ids.expand(3, -1)))
    assert (rank - want).abs().max() < 1e-5 and (rating - want_rating).abs().max() < 1e-5


def test_top_rows_is_the_stable_sort_without_the_excluded() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        scores = torch.randint(-3, 4, (n,), generator=gen).float()  # many ties
        if n > 3:
            scores[:2] = float("-inf")
        excluded = torch.randperm(n, generator=gen)[: int(torch.randint(0, n, (1,), generator=gen))]
        k = int(torch.randint(1, n + 1, (1,), generator=gen))
        keep = torch.ones(n, dtype=torch.bool)
        keep[excluded] = False
        rows = torch.arange(n)[keep]
        want = rows[torch.sort(scores[keep], descending=True, stable=True).indices[:k]]
        got = top_rows(scores.clone(), k, excluded)
        assert got.tolist() == want.tolist()


def test_top_rows_many_is_top_rows_person_by_person() -> None:
    """The block version (ties, -inf rows, exclusions, k past what is kept, nobody kept)
    picks each person's ``top_rows``, grouped by person, best first."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        people, n = (
            int(torch.randint(1, 7, (1,), generator=gen)),
            int(torch.randint(1, 30, (1,), generator=gen)),
        )
        scores = torch.randint(-3, 4, (people, n), generator=gen).float()  # many ties
        scores[:, : n // 4] = float("-inf")
        ks = torch.randint(1, n + 1, (people,), generator=gen)
        excluded = [torch.randperm(n, generator=gen)[: int(torch.randint(0, n + 1, (1,), generator=gen))] for _ in range(people)]  # fmt: skip
        pairs = (
            torch.cat([torch.full((len(e),), t) for t, e in enumerate(excluded)]).long(),
            torch.cat(excluded).long(),
        )
        person, row = top_rows_many(scores.clone(), ks, pairs)
        for t in range(people):
            want = top_rows(
                scores[t].clone(), int(ks[t]), excluded[t] if len(excluded[t]) else None
            )
            assert row[person == t].tolist() == want.tolist()
        assert person.tolist() == sorted(person.tolist())


def test_batch_answers_and_reasons_equal_one_at_a_time(recommender: Recommender) -> None:
    """``recommend_many`` (closed-form step for all, reasons computed per chunk) gives each
    person the single call's items, ratings and reasons."""
    from melu.serving import Request

    requests = [Request(user, ratings, 20) for user, ratings in PEOPLE * 3]
    for request, got in zip(requests, recommender.recommend_many(requests), strict=True):
        want = recommender.recommend(request.user, request.ratings, request.k)
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        for a, b in zip(got.items, want.items, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert [r.item_id for r in a.because] == [r.item_id for r in b.because]
