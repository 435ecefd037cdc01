"""Full-catalog top-N: each metric against a hand-computed case, the split on real ML-100K
(no support item ever a candidate or recommended, supports nested, no test user in any
fit) and the meta-learned model as a ranker (n = 0 is the unadapted model; n > 0 equals the
one generic adapt of each user)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from eval_fixtures import FAST_TOPN, tiny_run

from melu.bundle import Bundle, load_bundle
from melu.evaluation.topn import (
    Supports,
    TopNProtocol,
    list_stats,
    rank_users,
    scenario_items,
    topn_users,
    user_metrics,
)
from melu.evaluation.topn_baselines import fit_topn_baselines
from melu.evaluation.topn_eval import MODEL, evaluate_topn
from melu.evaluation.topn_model import ModelRanker
from melu.model.estimator import Encoded
from melu.model.maml import Examples, adapt
from melu.prepare import Prepared, RatingRows


def test_recall_precision_ndcg_by_hand() -> None:
    top = torch.tensor([[3, 1, 4, 0], [5, 6, 7, 2]])
    relevant = torch.zeros(2, 8, dtype=torch.bool)
    relevant[0, [1, 0, 7]] = True  # hits at ranks 2 and 4 of 3 relevant
    relevant[1, 2] = True  # one hit at rank 4 of 1 relevant
    got = user_metrics(top, relevant, (2, 4))
    d = [1 / math.log2(r + 1) for r in range(1, 5)]  # discount of ranks 1..4
    expected = {
        "recall@2": [1 / 3, 0.0],
        "precision@2": [1 / 2, 0.0],
        "ndcg@2": [d[1] / (d[0] + d[1]), 0.0],
        "recall@4": [2 / 3, 1.0],
        "precision@4": [2 / 4, 1 / 4],
        # ideal over min(k, |relevant|) ranks: 3 for the first user, 1 for the second
        "ndcg@4": [(d[1] + d[3]) / (d[0] + d[1] + d[2]), d[3] / d[0]],
    }
    for name, values in expected.items():
        torch.testing.assert_close(got[name], torch.tensor(values, dtype=torch.float64))


def test_coverage_popularity_and_overlaps_by_hand() -> None:
    top = torch.tensor([[0, 1], [1, 2], [1, 3]])
    no_ratings = torch.tensor([[0, 1], [0, 1], [3, 0]])
    popularity = torch.tensor([10.0, 20.0, 30.0, 40.0, 0.0])
    stats = list_stats(top, no_ratings, popularity, n_candidates=10)
    assert stats["coverage"] == pytest.approx(4 / 10)
    assert stats["popularity"] == pytest.approx((10 + 20 + 20 + 30 + 20 + 40) / 6)
    assert stats["overlap_pairwise"] == pytest.approx(1 / 2)  # every pair shares item 1 of 2
    assert stats["overlap_no_ratings"] == pytest.approx((2 / 2 + 1 / 2 + 1 / 2) / 3)


class SupportFirst:
    """A ranker that scores each user's support items highest: the protocol must still
    never recommend them."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def scores(self, supports: Supports) -> torch.Tensor:
        out = torch.rand(len(supports), self.n_items)
        rows = torch.arange(len(supports)).unsqueeze(1).expand_as(supports.items)
        out[rows[supports.mask], supports.items[supports.mask]] = 10.0
        return out


@pytest.mark.parametrize(
    ("scenario", "candidates"),
    [("user_cold", "all"), ("user_cold", "seen"), ("user_item_cold", "all")],
)
def test_split_keeps_the_support_out_of_candidates_and_lists(
    ml100k: Prepared, scenario: str, candidates: str
) -> None:
    protocol = TopNProtocol()
    items = scenario_items(ml100k, scenario, candidates)  # type: ignore[arg-type]
    previous: dict[int, set[int]] = {}
    for n in (1, 3, 5, 10):
        users = topn_users(ml100k, scenario, n, protocol, candidates)  # type: ignore[arg-type]
        assert len(users) > 10
        top = rank_users(SupportFirst(len(items)), users, 20)
        assert bool(users.candidates[top].all())
        for u in range(len(users)):
            support = set(users.supports.items[u][users.supports.mask[u]].tolist())
            held = set(users.heldout_items[u][users.heldout_mask[u]].tolist())
            assert len(support) == n and not support & held
            assert not support & set(top[u].tolist())
            assert all(bool(items[i]) for i in support | held)
            user = int(users.user_ids[u])
            if user in previous:
                assert previous[user] <= support  # nested: the support of 3 holds that of 1
            previous[user] = support


def _with_test_ratings_changed(prepared: Prepared) -> Prepared:
    rows = prepared.user_ratings["test"]
    flipped = RatingRows(rows.user_rows, rows.item_rows.flip(0), 6.0 - rows.ratings)
    return dataclasses.replace(prepared, user_ratings={**prepared.user_ratings, "test": flipped})


@pytest.fixture(scope="module")
def bundle(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(tiny_run(ml100k, tmp_path_factory) / "model")


def test_no_test_user_rating_reaches_any_fit(ml100k: Prepared, bundle: Bundle) -> None:
    protocol = TopNProtocol(supports=(3,))
    supports = topn_users(ml100k, "user_cold", 3, protocol).supports.select(slice(0, 20))
    fitted, _ = fit_topn_baselines(ml100k, protocol, None, FAST_TOPN)
    refitted, _ = fit_topn_baselines(_with_test_ratings_changed(ml100k), protocol, None, FAST_TOPN)
    assert set(fitted) == set(refitted)
    for name, ranker in fitted.items():
        torch.testing.assert_close(ranker.scores(supports), refitted[name].scores(supports))
    model = ModelRanker.from_bundle(bundle, ml100k.tables).scores(supports)
    changed = _with_test_ratings_changed(ml100k)
    torch.testing.assert_close(
        ModelRanker.from_bundle(bundle, changed.tables).scores(supports), model
    )


def _one_user_scores(bundle: Bundle, params: dict, rows: dict, bag: Any) -> torch.Tensor:
    """The reference: one user's rows encoded on their own, ranked as a batch of one."""
    enc = bundle.model.encode(params, rows)  # user (E_u,), items (I, E_i), ids (I,)
    one = Encoded(enc.user[None], enc.items[None], enc.ids[None])
    return bundle.model.rank_score(params, one, bag)[0].detach()


def test_model_ranker_without_ratings_is_the_unadapted_model(
    ml100k: Prepared, bundle: Bundle
) -> None:
    users = topn_users(ml100k, "user_cold", 0).supports.select(slice(0, 5))
    scores = ModelRanker.from_bundle(bundle, ml100k.tables).scores(users)
    items = torch.arange(len(ml100k.tables.item_ids))
    for c in range(len(users)):
        rows = ml100k.tables.gather(users.user_rows[c].long(), items)
        ref = _one_user_scores(bundle, bundle.params, rows, None)
        torch.testing.assert_close(scores[c], ref, rtol=1e-5, atol=1e-5)


def test_model_ranker_adapts_each_user_as_the_generic_inner_loop(
    ml100k: Prepared, bundle: Bundle
) -> None:
    supports = topn_users(ml100k, "user_cold", 5).supports.select(slice(0, 4))
    ranker = ModelRanker.from_bundle(bundle, ml100k.tables)
    if "rank.shared_cut" in ranker.params:  # the scores before the personalisation rule
        ranker.params = {**ranker.params, "rank.shared_cut": torch.zeros(5)}
    scores = ranker.scores(supports)
    model, meta = bundle.model, bundle.config.meta
    items = torch.arange(len(ml100k.tables.item_ids))
    for c in range(len(supports)):
        user = supports.user_rows[c].long()
        one = Examples(ml100k.tables.gather(user, supports.items[c]), supports.ratings[c],
                       supports.mask[c])  # fmt: skip
        params, _ = adapt(model, bundle.params, one, steps=meta.inner_steps, lr=meta.inner_lr,
                          first_order=True)  # fmt: skip
        bag = None
        if model.ranking:  # the ranking head sees the support as a bag of rated items
            ids = one.inputs[model.id_field][None]
            bag = model.bag(ids, one.ratings[None], one.mask[None])
        ref = _one_user_scores(bundle, params, ml100k.tables.gather(user, items), bag)
        torch.testing.assert_close(scores[c], ref, rtol=1e-4, atol=1e-4)
    empty = Supports(supports.user_rows, supports.items[:, :0], supports.ratings[:, :0],
                     supports.mask[:, :0])  # fmt: skip
    assert not torch.allclose(scores, ModelRanker.from_bundle(bundle, ml100k.tables).scores(empty))


def test_evaluate_topn_pairs_every_baseline_and_counts_users(
    ml100k: Prepared, bundle: Bundle
) -> None:
    protocol = TopNProtocol(supports=(1, 5))
    baselines, _ = fit_topn_baselines(ml100k, protocol, None, FAST_TOPN)
    rankers = {MODEL: ModelRanker.from_bundle(bundle, ml100k.tables), **baselines}
    out = evaluate_topn(ml100k, rankers, protocol, scenarios=("user_cold",), n_boot=50,
                        keep_per_user=True)  # fmt: skip
    points = out["scenarios"]["user_cold"]["all"]
    assert [p["n"] for p in points] == [0, 1, 5]
    for p in points:
        assert p["n_users"] == len(topn_users(ml100k, "user_cold", p["n"], protocol))
        assert set(p["comparison"]) == set(baselines) and p["best_baseline"] in baselines
        for name in rankers:
            f = p["methods"][name]
            assert f["recall@10_ci"][0] <= f["recall@10"] <= f["recall@10_ci"][1]
            assert 0 < f["coverage"] <= 1
        ours = torch.tensor(p["per_user"]["methods"][MODEL]["ndcg@10"])
        for base in baselines:
            theirs = torch.tensor(p["per_user"]["methods"][base]["ndcg@10"])
            diff = p["comparison"][base]["ndcg@10"]["difference"]
            assert diff == pytest.approx(float((ours - theirs).mean()), abs=1e-6)  # float32
    assert points[0]["methods"][MODEL]["overlap_no_ratings"] == pytest.approx(1.0)


def test_seen_candidates_leave_out_items_without_training_ratings(ml100k: Prepared) -> None:
    seen = scenario_items(ml100k, "user_cold", "seen")
    assert 0 < int(seen.sum()) < len(seen)
    assert not bool(scenario_items(ml100k, "user_item_cold", "seen").any())  # new items: unseen


def test_identical_rankers_are_grouped_once_in_the_report() -> None:
    """Rankers equal at every n form one group (one note), not a note per pair."""
    from melu.evaluation.topn_report import identical, topn_markdown

    def point(n: int, figures: dict[str, float]) -> dict[str, Any]:
        return {
            "n": n, "n_users": 3, "n_candidates": 10, "best_baseline": "popularity",
            "comparison": {},
            "methods": {r: {"recall@10": v, "recall@10_ci": [v, v]} for r, v in figures.items()},
        }  # fmt: skip

    same = {"model": 0.2, "popularity": 0.2, "ease": 0.2, "item_knn": 0.1, "implicit_als": 0.1}
    other = {**same, "ease": 0.3}
    points = [point(0, same), point(5, other)]
    rankers = list(same)
    assert identical(points, rankers) == [["model", "popularity"], ["item_knn", "implicit_als"]]
    assert identical([point(0, same)], ["model", "popularity", "ease"]) == [
        ["model", "popularity", "ease"]
    ]
    topn = {
        "protocol": {"threshold": 4.0, "min_ratings": 20, "min_heldout": 5},
        "rankers": ["model", "popularity", "ease"], "k_lists": 10,
        "scenarios": {"user_item_cold": {"all": [point(0, same)]}},
    }  # fmt: skip
    notes = [line for line in topn_markdown(topn) if line.startswith("Note:")]
    assert notes == [
        "Note: every method ranks identically here (every figure equal at every n); their"
        " rows and curves coincide."
    ]
    topn["rankers"] = ["model", "popularity", "ease", "item_knn"]
    topn["scenarios"]["user_item_cold"]["all"] = [point(0, same)]
    notes = [line for line in topn_markdown(topn) if line.startswith("Note:")]
    assert len(notes) == 1 and notes[0].startswith("Note: melu (adapted); popularity and EASE^R")
