"""Recommender on a trained ML-100K bundle: adaptation, ranking, validation, onboarding."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from melu.model import personal
from melu.model.estimator import PreferenceEstimator
from melu.model.maml import Examples, adapt
from melu.serving import InvalidInput, Recommender

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

RATINGS = [(50, 5.0), (181, 4.0), (1, 2.0), (100, 5.0), (258, 1.0)]
USER = {"gender": "F", "age": 25, "occupation": "student", "zip": "94110"}


def test_recommend_ranks_unrated_items_with_scores_in_scale(recommender: Recommender) -> None:
    result = recommender.recommend(USER, RATINGS, k=20)
    ids = [i.item_id for i in result.items]
    scores = [i.score for i in result.items]
    assert len(ids) == 20 == len(set(ids))
    assert not set(ids) & {r[0] for r in RATINGS}
    assert set(ids) <= set(recommender.catalog.item_ids.tolist())
    assert all(1.0 <= s <= 5.0 for s in scores)
    assert result.items[0].title and isinstance(result.items[0].genres, tuple)
    info = result.adaptation
    assert info.steps == recommender.bundle.config.meta.inner_steps == 3
    assert info.support_loss_after < info.support_loss_before  # type: ignore[operator]


def test_recommend_is_the_top_of_the_ranking_head_and_shows_predicted_ratings(
    recommender: Recommender,
) -> None:
    """The order is the ranking head's over the whole catalog (one adapt, then the head on
    the adapted params and the ratings as a bag); each item shows ``predict``'s rating."""
    top = recommender.recommend(USER, RATINGS, k=10, exclude_rated=False).items
    all_ids = recommender.catalog.item_ids.tolist()
    scores, _ = recommender.predict(USER, RATINGS, all_ids)
    by_id = dict(zip(all_ids, scores, strict=True))
    for item in top:
        assert item.score == pytest.approx(by_id[item.item_id], abs=1e-5)
    assert recommender.model.ranking
    bundle, model = recommender.bundle, recommender.model
    user = bundle.features.encode_user(USER)
    rated = torch.as_tensor(recommender.catalog.rows([r[0] for r in RATINGS], ("ratings",)))
    values = torch.tensor([r[1] for r in RATINGS])
    support = Examples(
        {k: v[None] for k, v in bundle.item_features.with_user(user, rated).items()},
        values[None],
        torch.ones(1, len(RATINGS), dtype=torch.bool),
    )
    params, _ = adapt(
        model, bundle.params, support, steps=bundle.config.meta.inner_steps,
        lr=bundle.config.meta.inner_lr, first_order=True, kernel="batched",
    )  # fmt: skip
    rows = torch.arange(len(all_ids))
    encoded = model.encode(
        params, {k: v[None] for k, v in bundle.item_features.with_user(user, rows).items()}
    )
    ids = bundle.item_features.items[model.id_field][rated][None]
    bag = model.bag(ids, values[None], support.mask)
    rank = model.rank_score(params, encoded, bag)[0]
    keep = personal.kept_of_list(bundle.params, bag)  # the personalisation rule, if it applies
    if keep is not None:
        plain = model.encode(
            bundle.params,
            {k: v[None] for k, v in bundle.item_features.with_user(user, rows).items()},
        )
        empty = model.rank_score(bundle.params, plain, None)[0].topk(10).indices
        every = bundle.item_features.items[model.id_field]
        rank = personal.shown_scores(rank[None], every, bag, empty[None], keep)[0]
    expected = torch.sort(rank, descending=True, stable=True).indices[:10]
    assert [i.item_id for i in top] == [all_ids[r] for r in expected.tolist()]


def test_each_recommendation_names_the_rated_movies_that_raised_it(
    recommender: Recommender,
) -> None:
    """``because``: rated movies with a positive contribution to the item's rank, best
    first, at most three; none without ratings."""
    rated = {i: r for i, r in RATINGS}
    items = recommender.recommend(USER, RATINGS, k=20).items
    assert any(item.because for item in items)
    for item in items:
        assert len(item.because) <= 3
        for reason in item.because:
            assert reason.item_id in rated and reason.rating == rated[reason.item_id]
            assert (
                reason.title
                == recommender.catalog.item(
                    recommender.catalog.rows([reason.item_id], ("x",))[0]
                ).title
            )
    assert all(not item.because for item in recommender.recommend(USER, [], k=10).items)


def test_predict_equals_adapt_then_apply_on_raw_features(recommender: Recommender) -> None:
    """The precomputed-embedding fast path equals the one adapt() on plain feature rows."""
    bundle = recommender.bundle
    user = bundle.features.encode_user(USER)
    support_rows = torch.as_tensor(recommender.catalog.rows([r[0] for r in RATINGS], ("ratings",)))
    support = Examples(
        bundle.item_features.with_user(user, support_rows),
        torch.tensor([r[1] for r in RATINGS]),
        torch.ones(len(RATINGS), dtype=torch.bool),
    )
    params, losses = adapt(
        bundle.model, bundle.params, support, steps=3, lr=bundle.config.meta.inner_lr
    )
    targets = [1, 7, 500, 1682]
    rows = torch.as_tensor(recommender.catalog.rows(targets, ("item_ids",)))
    with torch.no_grad():
        expected = bundle.model.predict(params, bundle.item_features.with_user(user, rows))
    got, info = recommender.predict(USER, RATINGS, targets)
    assert got == pytest.approx(expected.clamp(1, 5).tolist(), abs=1e-5)
    assert info.support_loss_before == pytest.approx(losses[0].item(), rel=1e-5)
    assert info.support_loss_after == pytest.approx(losses[-1].item(), rel=1e-5)


def test_precomputed_item_embeddings_change_nothing(
    bundle_path: Path, recommender: Recommender
) -> None:
    slow = Recommender.from_bundle(bundle_path, onboarding=False, precompute_items=False)
    assert not slow.encoder.shared and recommender.encoder.shared
    expected, _ = slow.predict(USER, RATINGS, [1, 2, 50, 1682])
    got, _ = recommender.predict(USER, RATINGS, [1, 2, 50, 1682])
    assert got == pytest.approx(expected, abs=1e-5)


def test_bundle_adapting_all_parameters_is_served_from_features(
    recommender: Recommender,
) -> None:
    """fast_params="all": embeddings adapt too, so rows are embedded per request."""
    bundle = recommender.bundle
    config = bundle.config.replace(
        model=bundle.config.model.replace(fast_params="all"),
        meta=bundle.config.meta.replace(inner_lr=0.002),  # tables too: a smaller step
    )
    model = PreferenceEstimator(config.model, bundle.features)
    every = Recommender(dataclasses.replace(bundle, config=config, model=model), threads=1)
    assert not every.encoder.shared and len(every.fast) > len(recommender.fast)
    result = every.recommend(USER, RATINGS, k=5)
    assert len(result.items) == 5
    assert result.adaptation.support_loss_after < result.adaptation.support_loss_before  # type: ignore[operator]
    assert len(every.onboarding_items(5)) == 5


def test_zero_ratings_scores_from_features_only(recommender: Recommender) -> None:
    woman, _ = recommender.predict({"gender": "F", "age": 18}, [], [1, 50, 100])
    man, info = recommender.predict({"gender": "M", "age": 56}, [], [1, 50, 100])
    assert info.steps == 0 and info.support_loss_before is None
    assert woman != man  # the user's features reach the prediction
    assert len(recommender.recommend({}, [], k=5).items) == 5


def test_unknown_user_values_predict_as_unknown(recommender: Recommender) -> None:
    assert (
        recommender.predict({"gender": "X"}, RATINGS, [1])[0]
        == recommender.predict({}, RATINGS, [1])[0]
    )


def test_candidates_and_exclude_rated(recommender: Recommender) -> None:
    candidates = [1, 50, 181, 300, 1000]
    kept = recommender.recommend(USER, RATINGS, k=5, candidates=candidates).items
    assert {i.item_id for i in kept} == {1000, 300}  # 1, 50, 181 were rated
    everything = recommender.recommend(
        USER, RATINGS, k=5, exclude_rated=False, candidates=candidates
    ).items
    assert sorted(i.item_id for i in everything) == sorted(candidates)


@pytest.mark.parametrize(
    ("call", "loc", "field", "value"),
    [
        (
            lambda r: r.recommend({}, [(99999, 4.0), (0, 3.0)], k=5),
            ("ratings", 0, "item_id"),
            "ratings[0].item_id",
            [0, 99999],
        ),
        (lambda r: r.recommend({}, [(1, 4.0), (1, 3.0)], k=5), ("ratings", 1, "item_id"), "ratings[1].item_id", 1),
        (lambda r: r.recommend({}, [(1, 6.0)], k=5), ("ratings", 0, "rating"), "ratings[0].rating", 6.0),
        (lambda r: r.recommend({}, [(1, 0.5)], k=5), ("ratings", 0, "rating"), "ratings[0].rating", 0.5),
        (lambda r: r.recommend({}, [(1, math.inf)], k=5), ("ratings", 0, "rating"), "ratings[0].rating", math.inf),
        (lambda r: r.recommend({}, [], k=0), ("k",), "k", 0),
        (lambda r: r.recommend({}, [], k=1683), ("k",), "k", 1683),
        (lambda r: r.recommend({}, [], candidates=[5, 4000]), ("candidate_ids", 1), "candidate_ids[1]", [4000]),
        (lambda r: r.recommend({}, [], candidates=[5, 7, 5]), ("candidate_ids", 2), "candidate_ids[2]", 5),
        (lambda r: r.recommend({}, [], candidates=[]), ("candidate_ids",), "candidate_ids", []),
        (lambda r: r.predict({}, [], [2, -3]), ("item_ids", 1), "item_ids[1]", [-3]),
        (lambda r: r.predict({}, [], [2, 2]), ("item_ids", 1), "item_ids[1]", 2),
        (lambda r: r.onboarding_items(0), ("n",), "n", 0),
    ],
)  # fmt: skip
def test_bad_input_names_field_and_value(
    recommender: Recommender, call: object, loc: tuple[str | int, ...], field: str, value: object
) -> None:
    with pytest.raises(InvalidInput) as err:
        call(recommender)  # type: ignore[operator]
    assert err.value.loc == loc
    assert err.value.field == field
    assert err.value.value == value
    assert field in str(err.value)


def test_nan_rating_is_rejected(recommender: Recommender) -> None:
    with pytest.raises(InvalidInput, match="finite"):
        recommender.predict({}, [(1, math.nan)], [2])


def test_works_under_no_grad_and_inference_mode(recommender: Recommender) -> None:
    plain = recommender.recommend(USER, RATINGS, k=10)
    with torch.no_grad():
        no_grad = recommender.recommend(USER, RATINGS, k=10)
    with torch.inference_mode():
        inference = recommender.recommend(USER, RATINGS, k=10)
    assert plain == no_grad == inference
    assert plain.adaptation.steps == 3


def test_threads_share_nothing_mutable(recommender: Recommender) -> None:
    """Different users adapting at once in many threads get their sequential answers."""
    users = [({"gender": "MF"[i % 2], "age": 10 + 3 * i}, RATINGS[: i % 6]) for i in range(48)]
    expected = [recommender.predict(u, r, [1, 50, 99, 500, 1682]) for u, r in users]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda ur: recommender.predict(*ur, [1, 50, 99, 500, 1682]), users))
    assert got == expected


def test_learned_inner_rates_are_used(recommender: Recommender) -> None:
    """Meta-SGD rates of zero leave the model where it was: same as zero ratings."""
    bundle = recommender.bundle
    zero = {k: torch.zeros_like(bundle.params[k]) for k in bundle.model.fast_names()}
    frozen = Recommender(dataclasses.replace(bundle, inner_lr=zero), onboarding=False)
    adapted, info = frozen.predict(USER, RATINGS, [1, 2, 3])
    assert info.support_loss_after == pytest.approx(info.support_loss_before)
    assert adapted == pytest.approx(frozen.predict(USER, [], [1, 2, 3])[0], abs=1e-5)


def test_onboarding_follows_its_rule_and_is_not_just_popularity(
    recommender: Recommender,
) -> None:
    board = recommender.onboarding_items(30)
    ids = [i.item_id for i in board]
    assert len(board) == 30 and len(set(ids)) == 30
    score = np.array([i.score for i in board])
    influences = np.array([i.influence for i in board])
    assert np.all(np.diff(score) <= 0)
    np.testing.assert_allclose(score, np.log1p([i.n_ratings for i in board]) * influences)
    # the rule, recomputed through the public API for the top item
    catalog = recommender.catalog
    probe = np.lexsort((np.arange(len(catalog)), -catalog.n_ratings))
    probe_ids = catalog.item_ids[probe[:100]].tolist()
    top = ids[0]
    high, _ = recommender.predict({}, [(top, 5.0)], probe_ids)
    low, _ = recommender.predict({}, [(top, 1.0)], probe_ids)
    influence = np.abs(np.array(high) - np.array(low)).mean()
    assert board[0].influence == pytest.approx(influence, rel=1e-3, abs=1e-4)
    # not just popularity: the most popular items are not simply the first ones asked
    popular = catalog.item_ids[np.argsort(-catalog.n_ratings, kind="stable")[:30]].tolist()
    assert ids != popular
    assert len(set(influences.tolist())) > 5


def test_from_bundle_accepts_the_run_folder(bundle_path: Path, recommender: Recommender) -> None:
    again = Recommender.from_bundle(bundle_path.parent, onboarding=False, threads=1)
    assert again.recommend(USER, RATINGS, k=5) == recommender.recommend(USER, RATINGS, k=5)
