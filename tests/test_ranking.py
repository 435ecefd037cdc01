"""The ranking head (melu/model/ranking.py): each part against a direct computation, the
leave-one-out co-occurrence against a recount, and head training on real ML-100K."""

from __future__ import annotations

import pytest
import torch

from melu.bundle import with_later_parts
from melu.config import Config
from melu.evaluation.topn import (
    Supports,
    rank_users,
    topn_users,
    training_popularity,
    user_metrics,
)
from melu.evaluation.topn_user_knn import Neighbours, UserKnnRanker
from melu.model import personal, ranking, ranking_stats, reasons
from melu.model.ranking import Bag
from melu.prepare import RatingRows
from melu.training.rank_judge import Pooled, Setting

V, LEVELS = 6, 5  # ids 0..5 (0 unknown), ratings 1..5


def head_params(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = ranking.head_shapes(V, LEVELS, user_width=3, factors=2, rank=2)
    return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}


def test_bag_scores_sum_rating_weighted_rows_without_the_diagonal_or_unknown_ids() -> None:
    params = head_params()
    bag = Bag(
        torch.tensor([[1, 3, 0]]), torch.tensor([[4, 0, 2]]), torch.tensor([[True, True, True]])
    )
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    got = ranking.bag_scores(params, bag, ids)[0]
    b, w = params["rank.item_item"], params["rank.level_weight"]
    for i in range(V):
        expected = (
            0.0
            if i == 0
            else sum(float(w[level] * b[j, i]) for j, level in ((1, 4), (3, 0)) if j != i)
        )
        assert float(got[i]) == pytest.approx(expected, abs=1e-12)


def test_rows_of_is_indexing_in_value_and_gradient_bit_for_bit() -> None:
    """The bags' rows by ``index_select`` equal ``matrix[ids]``, and so does the gradient
    they send back (repeated ids included), so training is unchanged."""
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(40, 30, generator=gen)
    ids = torch.randint(0, 40, (7, 5), generator=gen)
    ids[0, :3] = 4  # repeated rows sum their gradients
    upstream = torch.randn(7, 5, 30, generator=gen)
    grads = []
    for take in (lambda m: m[ids], lambda m: ranking.rows_of(m, ids)):
        leaf = matrix.clone().requires_grad_()
        rows = take(leaf)
        rows.backward(upstream)
        assert torch.equal(rows, matrix[ids])
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_contributions_are_the_bag_score_split_by_rated_item() -> None:
    params = head_params(1)
    bag = Bag(
        torch.tensor([[2, 4, 5]]), torch.tensor([[4, 1, 3]]), torch.tensor([[True, True, False]])
    )
    ids = torch.tensor([[1, 2, 3, 4, 0]])
    parts = reasons.contributions(params, bag, ids)  # (1, 5, 3)
    params_ease = {**params, "rank.ease": torch.eye(V, dtype=torch.float64) * 2.0}
    ease_parts = reasons.contributions(params_ease, bag, ids) - reasons.contributions(
        {**params, "rank.ease": torch.zeros(V, V, dtype=torch.float64)}, bag, ids
    )
    assert float(ease_parts.abs().sum()) == 0.0  # a diagonal P: B_EASE is 0 off the diagonal
    no_ease = {
        **params, "rank.ease": torch.zeros(V, V, dtype=torch.float64),
        "rank.liked": torch.zeros(V, V, dtype=torch.float64),
        "rank.walk": torch.zeros(V, V, dtype=torch.float64),
    }  # fmt: skip
    parts = reasons.contributions(no_ease, bag, ids)
    scale = ranking.bucket_weight(params["rank.learned_weight"], bag)  # λ_L of a 2-rating bag
    expected = scale * ranking.bag_scores(params, bag, ids)
    assert parts.sum(-1) == pytest.approx(expected, abs=1e-12)
    assert float(parts[0, 1, 0]) == 0.0  # item 2 never explains itself
    assert float(parts[0, :, 2].abs().sum()) == 0.0  # padding slot
    assert float(parts[0, 4].abs().sum()) == 0.0  # unknown id


def test_cooccurrence_is_the_share_of_raters_who_also_rated() -> None:
    users = torch.tensor([0, 0, 1, 1, 1, 2])
    ids = torch.tensor([1, 2, 1, 2, 3, 1])
    share, count = ranking_stats.cooccurrence(ids, users, V, 3)
    assert count[:4].tolist() == [0.0, 3.0, 2.0, 1.0]
    assert float(share[1, 2]) == pytest.approx(2 / 3)  # of j=1's 3 raters, 2 rated 2
    assert float(share[2, 3]) == pytest.approx(1 / 2)
    assert float(share[1, 1]) == 0.0 and float(share[0].abs().sum()) == 0.0


def test_leaving_the_user_out_equals_recounting_without_them() -> None:
    """P' from ``bag.rated`` equals P counted from everyone but that user (exact)."""
    gen = torch.Generator().manual_seed(0)
    rated = torch.rand(8, V, generator=gen) < 0.6
    rated[:, 0] = False
    users, ids = rated.nonzero(as_tuple=True)
    share, count = ranking_stats.cooccurrence(ids, users, V, 8)
    u = 3
    keep = users != u
    share_wo, count_wo = ranking_stats.cooccurrence(ids[keep], users[keep], V, 8)
    support = [j for j in range(1, V) if rated[u, j]][:2]
    params = {
        **head_params(),
        "rank.cooccurrence": share.double(),
        "rank.item_count": count.double(),
    }
    params["rank.cooc_weight"] = torch.ones(1, dtype=torch.float64)
    bag = Bag(torch.tensor([support]), torch.tensor([[4, 4]]), torch.tensor([[True, True]]))
    ids_all = torch.arange(V)
    loo = ranking.cooccurrence_scores(
        params, bag._replace(rated=rated[u : u + 1].double()), ids_all
    )
    recount = {
        **params,
        "rank.cooccurrence": share_wo.double(),
        "rank.item_count": count_wo.double(),
    }
    direct = ranking.cooccurrence_scores(recount, bag, ids_all)
    # the diagonal of the recount is 0 and the support is never ranked; compare the rest
    others = [i for i in range(1, V) if i not in support]
    assert loo[0, others] == pytest.approx(direct[0, others], abs=1e-6)  # float32 counts


def test_an_empty_bag_adds_nothing() -> None:
    params = head_params(2)
    empty = torch.zeros(2, 0, dtype=torch.long)
    bag = Bag(empty, empty, empty.bool())
    ids = torch.arange(V)
    assert float(ranking.bag_scores(params, bag, ids).abs().sum()) == 0.0
    assert float(ranking.cooccurrence_scores(params, bag, ids).abs().sum()) == 0.0


pytest_plugins = ["service_fixtures"]  # bundle_path: a brief rating part, its head picked


@pytest.mark.slow
def test_the_trained_head_beats_popularity_on_validation_users(ml100k, bundle_path) -> None:  # type: ignore[no-untyped-def]
    """The service tests' bundle (a briefly meta-trained rating part, its head picked):
    validation users' NDCG@10 at 5 ratings beats popularity's."""
    from melu.bundle import load_bundle
    from melu.evaluation.topn_model import ModelRanker

    bundle = load_bundle(bundle_path)
    model, params = bundle.model, bundle.params
    assert model.ranking and float(params["rank.ease"].abs().sum()) > 0  # EASE^R fit
    users = topn_users(ml100k, "validation", 5)
    ranker = ModelRanker(model, params, ml100k.tables, steps=3, lr=Config().meta.inner_lr)
    pop = training_popularity(ml100k.train_ratings, len(ml100k.catalog)).float()

    class Popularity:
        def scores(self, s):  # type: ignore[no-untyped-def]
            return pop.expand(len(s), -1)

    ours = user_metrics(rank_users(ranker, users, 10), users.relevant(4.0), (10,))["ndcg@10"]
    base = user_metrics(rank_users(Popularity(), users, 10), users.relevant(4.0), (10,))["ndcg@10"]
    assert float(ours.mean()) > float(base.mean())


@pytest.mark.slow
def test_head_training_returns_only_the_head(ml100k, bundle_path) -> None:  # type: ignore[no-untyped-def]
    """``train_ranking`` trains ``rank.*`` only: the rating part it is given (and so the
    predicted ratings and the rating error) is exactly what meta-training produced."""
    from melu.bundle import load_bundle
    from melu.training.rank_train import train_ranking

    bundle = load_bundle(bundle_path)
    rating = {k: v.clone() for k, v in bundle.params.items() if not k.startswith("rank.")}
    head = {"rank_epochs": 1, "rank_mix": False}  # one epoch of training, without the pick
    config = bundle.config.replace(train=bundle.config.train.replace(**head))
    result = train_ranking(config, bundle.model, rating, ml100k, torch.device("cpu"), 0.5)
    assert set(result.params) == set(bundle.model.rank_shapes())
    for k, v in rating.items():
        assert torch.equal(v, bundle.params[k])


def test_ease_contributions_sum_to_the_ease_part() -> None:
    """With the learned pairs at 0, the reasons split ``ease_scores`` by rated item."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(V, V, generator=gen, dtype=torch.float64)
    params = {
        **head_params(3),
        "rank.item_item": torch.zeros(V, V, dtype=torch.float64),
        "rank.ease": torch.linalg.inv(a @ a.T + V * torch.eye(V, dtype=torch.float64)),
        "rank.liked": torch.zeros(V, V, dtype=torch.float64),
        "rank.walk": torch.zeros(V, V, dtype=torch.float64),
    }
    bag = Bag(torch.tensor([[2, 4]]), torch.tensor([[4, 1]]), torch.tensor([[True, True]]))
    ids = torch.tensor([[1, 3, 5]])  # not in the bag
    parts = reasons.contributions(params, bag, ids)
    assert parts.sum(-1) == pytest.approx(ranking.ease_scores(params, bag, ids), abs=1e-12)


def test_liked_weights_are_the_constrained_least_squares_solve() -> None:
    """B = argmin ‖Y − XB‖² + λ‖B‖² with diag(B) = 0, solved column by column without
    the column's own item (the constraint removes that regressor), equals the closed form; and
    with Y = X it is EASE^R's B = I − P·diag(1/P_ii)."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(30, V, generator=gen) < 0.4).double()
    y = x * (torch.rand(30, V, generator=gen) < 0.6).double()  # the liked subset of rated
    lam = 3.0
    got = ranking_stats.liked_weights(x.T @ x, x.T @ y, lam).double()
    for i in range(V):
        others = [j for j in range(V) if j != i]
        xo = x[:, others]
        column = torch.linalg.solve(xo.T @ xo + lam * torch.eye(V - 1, dtype=torch.float64),
                                    xo.T @ y[:, i])  # fmt: skip
        assert float(got[i, i]) == pytest.approx(0.0, abs=1e-6)
        assert got[others, i] == pytest.approx(column, abs=1e-5)
    prec = ranking_stats.ease_precision(x.T @ x, lam).double()
    ease = torch.eye(V, dtype=torch.float64) - prec / prec.diagonal().unsqueeze(0)
    same = ranking_stats.liked_weights(x.T @ x, x.T @ x, lam).double()
    assert same == pytest.approx(ease, abs=1e-5)


@pytest.mark.parametrize("part", ranking.PICKED)
def test_picked_part_scores_sum_weighted_rows_and_split_into_reasons(part: str) -> None:
    """c·Σ_j w(r_j)·M[j, i] of the liked-target and the walk part; its reasons sum to it;
    unknown ids and padding add nothing; a training user's episode (``rated``) gets 0 from
    it (it was solved with them)."""
    gen = torch.Generator().manual_seed(7)
    matrix = torch.randn(V, V, generator=gen, dtype=torch.float64)
    matrix.fill_diagonal_(0.0)
    zero = torch.zeros(V, V, dtype=torch.float64)
    params = {**head_params(4), "rank.item_item": zero, "rank.ease": zero}
    params.update({f"rank.{other}": zero for other in ranking.PICKED})
    params[f"rank.{part}"] = matrix
    bag = Bag(
        torch.tensor([[2, 4, 0]]), torch.tensor([[4, 1, 2]]), torch.tensor([[True, True, True]])
    )
    ids = torch.tensor([[1, 3, 5, 0]])
    score = {"liked": ranking.liked_scores, "walk": ranking.walk_scores}[part]
    got = score(params, bag, ids)[0]
    w = params[f"rank.{part}_level"]
    c = ranking.bucket_weight(params[f"rank.{part}_weight"], bag)
    for n, i in enumerate(ids[0].tolist()):
        expected = 0.0 if i == 0 else float(c) * sum(
            float(w[level] * matrix[j, i]) for j, level in ((2, 4), (4, 1))
        )  # fmt: skip
        assert float(got[n]) == pytest.approx(expected, abs=1e-12)
    parts = reasons.contributions(params, bag, ids)
    assert parts.sum(-1)[0] == pytest.approx(got, abs=1e-12)
    rated = Bag(bag.ids, bag.levels, bag.mask, torch.ones(1, V, dtype=torch.float64))
    assert float(score(params, rated, ids).abs().sum()) == 0.0


def test_walk_weights_are_rp3beta_by_hand() -> None:
    """W[j, i] = Σ_u (x_uj / d_j)^α (x_ui / d_u)^α / d_i^β with a zero diagonal, computed
    walk by walk; and β > 0 turns a popular neighbour below a rarer one."""
    x = torch.tensor([
        [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 1, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0],
    ], dtype=torch.float32)  # fmt: skip
    users, items = x.shape
    d_user, d_item = x.sum(1), x.sum(0)
    for alpha, beta in ((1.0, 0.0), (0.5, 0.4)):
        got = ranking_stats.walk_weights(x, alpha, beta)
        for j in range(items):
            for i in range(items):
                walks = sum(
                    (float(x[u, j]) / max(float(d_item[j]), 1.0)) ** alpha
                    * (float(x[u, i]) / float(d_user[u])) ** alpha
                    for u in range(users) if x[u, j] and x[u, i]
                )  # fmt: skip
                expected = 0.0 if i == j else walks / max(float(d_item[i]), 1.0) ** beta
                assert float(got[j, i]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert float(got[4].abs().sum()) == 0.0  # never rated: no walk starts there
    # from item 0, item 1 (4 raters) is reached by three walks and item 3 (1 rater) by one:
    # the plain walk puts 1 first, β = 2 the rarer 3
    plain, lowered = (ranking_stats.walk_weights(x, 1.0, b) for b in (0.0, 2.0))
    assert float(plain[0, 1]) > float(plain[0, 3])
    assert float(lowered[0, 1]) < float(lowered[0, 3])


def test_a_head_saved_before_the_liked_part_loads_with_it_off() -> None:
    shapes = ranking.head_shapes(V, LEVELS, user_width=3, factors=2, rank=2)
    old = {k: v for k, v in head_params().items() if k not in ranking.LATER}
    got = with_later_parts(old, shapes)
    assert set(got) == set(shapes)
    assert all(float(got[k].abs().sum()) == 0.0 for k in ranking.LATER)
    assert with_later_parts({"mlp.0.weight": torch.ones(1)}, shapes).keys() == {
        "mlp.0.weight"
    }  # no head: nothing added


def test_mixing_weights_follow_the_support_size_buckets() -> None:
    """Bucket b holds sizes SUPPORT_BUCKETS[b] <= n < SUPPORT_BUCKETS[b + 1]."""
    sizes = [0, 1, 2, 3, 4, 7, 8, 30]
    mask = torch.arange(30).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    bag = Bag(
        torch.ones_like(mask, dtype=torch.long), torch.zeros_like(mask, dtype=torch.long), mask
    )
    weights = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0])
    got = ranking.bucket_weight(weights, bag).squeeze(-1).tolist()
    assert got == [10.0, 11.0, 12.0, 12.0, 13.0, 13.0, 14.0, 14.0]
    assert ranking.bucket_weight(torch.tensor([2.0]), bag).squeeze(-1).tolist() == [2.0] * 8


def test_each_bucket_is_picked_on_draws_of_its_own_support_sizes() -> None:
    """Every size a bucket's weights are picked on falls in that bucket (so the pick sees
    the supports it will serve), and the draws cycle through the sizes with seed k for the
    k-th: at least ``draws`` of them and one per size; one for the no-ratings bucket."""
    from melu.training.rank_mix import MIX_SIZES, mix_draws
    from melu.training.rank_train import VALIDATION_SUPPORTS

    assert MIX_SIZES["one"] == tuple((n,) for n in VALIDATION_SUPPORTS)
    edges = (*ranking.SUPPORT_BUCKETS, 10**9)
    for rule, buckets in MIX_SIZES.items():
        assert len(buckets) == len(ranking.SUPPORT_BUCKETS), rule
        for b, sizes in enumerate(buckets):
            assert all(edges[b] <= n < edges[b + 1] for n in sizes), (rule, b, sizes)
    assert mix_draws((0,), 4) == [(0, 0)]
    assert mix_draws((3,), 2) == [(3, 0), (3, 1)]
    assert mix_draws((2, 3), 2) == [(2, 0), (3, 1)]
    assert mix_draws((4, 5, 7), 2) == [(4, 0), (5, 1), (7, 2)]
    assert mix_draws((4, 5, 7), 4) == [(4, 0), (5, 1), (7, 2), (4, 3)]


def test_popularity_leaves_a_training_user_out() -> None:
    """log(1 + n_i), n_i the raters of i; with ``bag.rated`` the user's own ratings are not
    counted (as if recounted without them)."""
    params = {**head_params(), "rank.item_count": torch.tensor([0.0, 3.0, 1.0, 5.0, 0.0, 2.0])}
    rated = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    bag = Bag(torch.tensor([[1]]), torch.tensor([[4]]), torch.tensor([[True]]))
    ids = torch.arange(V)
    assert ranking.popularity(params, bag, ids).tolist() == pytest.approx(
        torch.log1p(params["rank.item_count"]).tolist()
    )
    loo = ranking.popularity(params, bag._replace(rated=rated), ids)[0]
    assert loo.tolist() == pytest.approx(torch.log1p(torch.tensor([0, 2, 0, 5, 0, 2.0])).tolist())


@pytest.mark.slow
def test_mixing_picked_on_validation_never_lowers_its_objective_and_is_what_the_head_ranks_by(
    ml100k, bundle_path
) -> None:  # type: ignore[no-untyped-def]
    """``pick_mixing`` on the bundle's head: each bucket's objective (NDCG@10 and Recall@10
    relative to its start's, summed) is at least its start's, and the head with the chosen weights, ranked through ``ModelRanker`` (the
    served path), scores what the search says it scores."""
    from melu.bundle import load_bundle
    from melu.evaluation.topn_model import ModelRanker
    from melu.training.rank_mix import pick_mixing
    from melu.training.rank_train import VALIDATION_SUPPORTS

    bundle = load_bundle(bundle_path)
    ranker = ModelRanker.from_bundle(bundle, ml100k.tables)
    users = [topn_users(ml100k, "validation", n) for n in VALIDATION_SUPPORTS]
    choice = pick_mixing(ranker, dict(ranker.params), [[u] for u in users], 4.0)
    for b in range(len(users)):  # NDCG@10 and Recall@10 relative to the start's, summed
        gain = choice.after[b] / choice.before[b] + choice.recall_after[b] / choice.recall_before[b]
        assert gain >= 2.0 - 1e-9
    assert torch.equal(ranker.params["rank.pop_weight"], bundle.params["rank.pop_weight"])
    mixed = ModelRanker(
        bundle.model, {**bundle.params, **choice.weights}, ml100k.tables, steps=3,
        lr=Config().meta.inner_lr,
    )  # fmt: skip
    for setting, expected in zip(users, choice.after, strict=True):
        top = rank_users(mixed, setting, 10)
        got = user_metrics(top, setting.relevant(4.0), (10,))["ndcg@10"].mean()
        assert float(got) == pytest.approx(expected, abs=2e-3)


def test_new_items_are_not_ordered_by_their_content_predicted_rating() -> None:
    """γ·r̂ enters only for known ids: an unknown id's score ignores its predicted rating."""
    params = head_params(4)
    params["rank.rating_weight"] = torch.full((5,), 2.0, dtype=torch.float64)
    for counted in ("rank.item_count", "rank.cooccurrence"):  # counts and shares are >= 0
        params[counted] = params[counted].abs()
    bag = Bag(torch.tensor([[2, 3]]), torch.tensor([[4, 2]]), torch.tensor([[True, True]]))
    ids = torch.tensor([0, 1, 4])
    user, state = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    low, high = torch.ones(1, 3, dtype=torch.float64), 5 * torch.ones(1, 3, dtype=torch.float64)
    a = ranking.head_scores(params, user, state, ids, bag, low)
    b = ranking.head_scores(params, user, state, ids, bag, high)
    assert float(a[0, 0]) == pytest.approx(float(b[0, 0]), abs=1e-12)  # unknown id
    assert (b[0, 1:] - a[0, 1:]).tolist() == pytest.approx([8.0, 8.0])  # γ·Δr̂ = 2·4


def _mixing_setting(seed: int = 0):  # type: ignore[no-untyped-def]
    """A small validation draw for ``rank_mix._search``: 40 users × 60 items, each user
    relevant on 6 items of their own taste; the popularity part favours items 0–9 (relevant
    to many), the 'rest' part (EASE^R's stand-in) knows each user's taste with noise."""
    from melu.training.rank_mix import PARTS

    gen = torch.Generator().manual_seed(seed)
    users, items = 40, 60
    relevant = torch.zeros(users, items, dtype=torch.bool)
    for u in range(users):
        relevant[u, torch.randperm(50, generator=gen)[:4] + 10] = True
        relevant[u, torch.randperm(10, generator=gen)[:2]] = True
    rest = relevant.float() * 1.5 + torch.randn(users, items, generator=gen)
    popular = torch.zeros(users, items)
    popular[:, :10] = torch.linspace(3.0, 2.0, 10)
    parts = torch.zeros(1 + len(PARTS), users, items)
    parts[0], parts[1] = rest, popular
    empty = popular[0].topk(10).indices.expand(users, 10)  # everyone's no-ratings list
    return Setting(parts, relevant, empty.clone()), PARTS


def test_judging_several_mixes_at_once_is_judging_each_alone() -> None:
    """``Setting.judge`` on mixes stacked (M, U, I): per mix, NDCG@10 and Recall@10 equal
    ``topn.user_metrics`` of that mix's top 10, and the shared share a direct count; and
    ``Pooled.each`` pools each mix over the draws as ``Pooled.of`` pools it alone."""

    setting, parts = _mixing_setting()
    other, _ = _mixing_setting(seed=1)
    weights = [{**dict.fromkeys(parts, 0.0), parts[0]: w} for w in (-1.0, 0.0, 0.5, 2.0)]
    for s in (setting, other):
        stacked = torch.stack([s.scores(w) for w in weights])  # (4, U, I)
        ndcg, recall, shared = s.judge(stacked)
        assert ndcg.shape == recall.shape == (4, 40) and shared is not None
        for m, scores in enumerate(stacked):
            top = scores.topk(10, dim=1).indices
            direct = user_metrics(top, s.relevant, (10,))
            torch.testing.assert_close(ndcg[m], direct["ndcg@10"])
            torch.testing.assert_close(recall[m], direct["recall@10"])
            lists = zip(top.tolist(), s.empty.tolist(), strict=True)
            count = [len(set(a) & set(b)) / 10 for a, b in lists]
            assert shared[m].tolist() == pytest.approx(count)
    both = [s.judge(torch.stack([s.scores(w) for w in weights])) for s in (setting, other)]
    alone = [Pooled.of([s.judge(s.scores(w)) for s in (setting, other)]) for w in weights]
    pooled = Pooled.each(both)
    assert [p.ndcg for p in pooled] == pytest.approx([p.ndcg for p in alone])
    assert [p.recall for p in pooled] == pytest.approx([p.recall for p in alone])
    assert [p.shared for p in pooled] == pytest.approx([p.shared for p in alone])
    assert len({p.ndcg for p in pooled}) > 1  # the mixes differ


def test_mixing_search_is_exhaustive_over_the_grid() -> None:
    """``_search`` returns the grid's best (π, γ, c) by the objective: no mix on the grid
    scores higher, and what it reports is what its weights score."""
    import itertools

    from melu.training.rank_mix import GRID, SEARCHED, _search

    setting, parts = _mixing_setting()
    start = dict.fromkeys(parts, 0.0)
    _, kept, picked = _search([setting], start, 1.0, "ndcg")
    again = Pooled.of([setting.judge(setting.scores(picked))])
    assert again.ndcg == pytest.approx(kept.ndcg)
    for values in itertools.product(*(GRID[k] for k in SEARCHED)):
        trial = {**picked, **dict(zip(SEARCHED, values, strict=True))}
        assert Pooled.of([setting.judge(setting.scores(trial))]).ndcg <= kept.ndcg + 1e-6


def test_mixing_search_keeps_the_share_with_the_no_ratings_list_under_its_cap() -> None:
    """With ``max_shared``, the kept mix shares at most that with the no-ratings lists,
    and without it the best mix here shares more (the cap binds)."""
    from melu.training.rank_mix import _search

    setting, parts = _mixing_setting(1)
    start = dict.fromkeys(parts, 0.0)
    _, free, _ = _search([setting], start, 1.0, "ndcg")
    _, capped, weights = _search([setting], start, 0.1, "ndcg")
    assert free.shared > 0.1
    assert capped.shared <= 0.1
    assert Pooled.of([setting.judge(setting.scores(weights))]).shared <= 0.1
    assert capped.ndcg <= free.ndcg


@pytest.mark.slow
def test_the_cap_on_shared_items_limits_only_the_buckets_from_its_size(ml100k, bundle_path) -> None:  # type: ignore[no-untyped-def]
    """``pick_mixing(max_shared=0.3, shared_from=4)`` on the bundle's head: the buckets of
    fewer than 4 ratings pick what they pick without a cap, and the lists of the buckets
    of 4 or more, ranked through ``ModelRanker``, share at most 0.3 with the user's
    no-ratings list on average."""
    from melu.bundle import load_bundle
    from melu.evaluation.topn_model import ModelRanker
    from melu.training.rank_mix import PARTS, pick_mixing
    from melu.training.rank_train import VALIDATION_SUPPORTS

    bundle = load_bundle(bundle_path)
    ranker = ModelRanker.from_bundle(bundle, ml100k.tables)
    users = [topn_users(ml100k, "validation", n) for n in VALIDATION_SUPPORTS]
    draws = [[u] for u in users]
    free = pick_mixing(ranker, dict(ranker.params), draws, 4.0)
    capped = pick_mixing(ranker, dict(ranker.params), draws, 4.0, 0.3, shared_from=4)
    small = [b for b, edge in enumerate(ranking.SUPPORT_BUCKETS) if edge < 4]
    for k in PARTS:
        assert torch.equal(free.weights[k][small], capped.weights[k][small]), k
    mixed = ModelRanker(
        bundle.model, {**bundle.params, **capped.weights}, ml100k.tables, steps=3,
        lr=Config().meta.inner_lr,
    )  # fmt: skip
    empty = dict(zip(users[0].user_ids.tolist(), rank_users(mixed, users[0], 10), strict=True))
    for setting in users:
        if setting.n < 4:
            continue
        top = rank_users(mixed, setting, 10)
        none = torch.stack([empty[int(u)] for u in setting.user_ids])
        shared = (top.unsqueeze(2) == none.unsqueeze(1)).any(2).double().mean()
        assert float(shared) <= 0.3 + 0.02, setting.n


def _mix_setting(seed: int) -> Setting:
    """A bucket's validation draw built by hand: 40 users × 30 items, 3 relevant each;
    EASE^R's part pushes the relevant items down hard, the liked-target part lifts them."""
    from melu.training.rank_mix import PARTS

    gen = torch.Generator().manual_seed(seed)
    users, items = 40, 30
    relevant = torch.zeros(users, items, dtype=torch.bool)
    relevant[torch.arange(users).unsqueeze(1), torch.randperm(items, generator=gen)[:3]] = True
    parts = torch.zeros(1 + len(PARTS), users, items)
    parts[0] = torch.rand(users, items, generator=gen) * 0.1  # the rest: noise
    parts[1 + PARTS.index("rank.pop_weight")] = torch.rand(users, items, generator=gen)
    parts[1 + PARTS.index("rank.ease_weight")] = -10.0 * relevant.float()
    parts[1 + PARTS.index("rank.liked_weight")] = relevant.float()
    return Setting(parts, relevant)


def test_the_blend_stage_lets_the_liked_part_replace_ease_and_passes_never_lower_the_pick() -> None:
    """Without the blend, c_l (at most 5) cannot outweigh EASE^R (−10 on the relevant
    items), so the relevant items stay last; with it, EASE^R is dropped and every list is
    perfect. A second pass starts from the first's mix, so its objective is never lower."""
    from melu.training.rank_mix import PARTS, _search, mix_objective

    settings = [_mix_setting(0), _mix_setting(1)]
    start = {k: 0.0 for k in PARTS} | {"rank.ease_weight": 1.0}
    _, old, _ = _search(settings, start, 1.0, "ndcg", blend=False, ease=1.0)
    _, new, mix = _search(settings, start, 1.0, "ndcg", blend=True, ease=1.0)
    assert old.ndcg < 0.2 and new.ndcg == pytest.approx(1.0)
    assert mix["rank.ease_weight"] == 0.0 and mix["rank.liked_weight"] > 0
    for metric in ("ndcg", "ndcg+recall"):
        first = _search(settings, start, 1.0, metric, passes=1, blend=False)
        second = _search(settings, start, 1.0, metric, passes=2, blend=False)
        value = [mix_objective(k.ndcg, k.recall, s.ndcg, s.recall, metric)
                 for s, k, _ in (first, second)]  # fmt: skip
        assert value[1] >= value[0] - 1e-9


def test_limit_shared_keeps_only_the_best_of_the_no_ratings_list_in_reach() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    empty = torch.tensor([[0, 1, 2], [0, 1, 2]])  # each user's no-ratings list
    out = personal.limit_shared(scores, empty, torch.tensor([1, 3]))
    # user 0 keeps item 0, items 1 and 2 go below every other item in their own order
    assert out[0].tolist() == [5.0, -2.0, -3.0, 2.0, 1.0, 0.0]
    assert out[0].argsort(descending=True).tolist() == [0, 3, 4, 5, 1, 2]
    assert torch.equal(out[1], scores[1])  # keep >= the list's length changes nothing


def test_limit_shared_counts_no_item_already_out() -> None:
    inf = torch.inf
    scores = torch.tensor([[-inf, 4.0, 3.0, 2.0, 1.0, 0.0]])  # item 0 is in the support
    out = personal.limit_shared(scores, torch.tensor([[0, 1, 2]]), torch.tensor([1]))
    assert out[0, 0] == -inf and out[0, 1] == 4.0  # the out item takes no kept place
    assert out[0].topk(2).indices.tolist() == [1, 3]  # item 2 is pushed down
    assert bool((out[0, 2] < out[0, 3:]).all())


def test_limit_shared_bounds_the_share_of_any_top_10() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 200, generator=g)
    empty = torch.stack([torch.randperm(200, generator=g)[: personal.SHOWN] for _ in range(50)])
    keep = torch.randint(0, personal.SHOWN + 1, (50,), generator=g)
    top = personal.limit_shared(scores, empty, keep).topk(personal.SHOWN).indices
    shared = (top.unsqueeze(2) == empty.unsqueeze(1)).any(2).sum(1)
    assert bool((shared <= keep).all())
    # the kept ones are each user's best-scored of their list, and the rest of the list is
    # the same as before
    for t in range(50):
        own = scores[t, empty[t]]
        best = set(empty[t, own.argsort(descending=True)[: int(keep[t])]].tolist())
        assert set(top[t].tolist()) & set(empty[t].tolist()) <= best


def test_shown_scores_leave_the_support_out_of_the_count_and_the_cut_off_is_no_rule() -> None:
    scores = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6])  # catalog row r has id r (id 0: unknown)
    bag = Bag(torch.tensor([[1, 0]]), torch.tensor([[4, 4]]), torch.tensor([[True, False]]))
    empty = torch.tensor([[1, 2, 3]])  # the no-ratings list; item 1 is now rated
    out = personal.shown_scores(scores, ids, bag, empty, torch.tensor([1]))
    assert out[0, 1] == 5.0  # the rated item keeps its score and takes no kept place
    assert out[0, 2] == 4.0  # the best of the rest of the list stays
    assert bool((out[0, 3] < out[0, [0, 4, 5, 6]]).all())  # the next one goes below all
    assert not bool(torch.isinf(out).any())
    params = {"rank.shared_cut": torch.zeros(len(ranking.SUPPORT_BUCKETS))}
    assert personal.kept_of_list(params, bag) is None  # cut 0 everywhere: off
    params["rank.shared_cut"][3:] = 7.0  # from 4 ratings on: keep 3
    assert personal.kept_of_list(params, bag) is None  # one rating: its bucket is off
    five = Bag(torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long),
               torch.tensor([[True] * 5, [True] * 2 + [False] * 3]))  # fmt: skip
    assert personal.kept_of_list(params, five).tolist() == [3, personal.SHOWN]


@pytest.mark.slow
def test_the_personalisation_rule_bounds_what_a_list_shares_with_the_no_ratings_list(
    ml100k, bundle_path
) -> None:  # type: ignore[no-untyped-def]
    """``ModelRanker`` (``rank_catalog``) with ``rank.shared_cut`` = 7 from 4 ratings: each
    validation user's top-10 at 5 ratings holds at most 3 items of their no-ratings list
    (which the rule leaves as it was), and at 1 rating the lists are as without the rule."""
    from melu.bundle import load_bundle
    from melu.evaluation.topn_model import ModelRanker
    from melu.model.personal import shared_cut

    bundle = load_bundle(bundle_path)
    free = ModelRanker.from_bundle(bundle, ml100k.tables)
    free.params = {**free.params, "rank.shared_cut": shared_cut(10, 4)}  # the rule off
    ruled = ModelRanker.from_bundle(bundle, ml100k.tables)
    ruled.params = {**ruled.params, "rank.shared_cut": shared_cut(3, 4)}
    assert ruled.params["rank.shared_cut"].tolist() == [0.0, 0.0, 0.0, 7.0, 7.0]
    none_users = topn_users(ml100k, "validation", 0)
    empty = rank_users(ruled, none_users, 10)
    assert torch.equal(empty, rank_users(free, none_users, 10))
    lists = dict(zip(none_users.user_ids.tolist(), empty, strict=True))
    five = topn_users(ml100k, "validation", 5)
    top, before = rank_users(ruled, five, 10), rank_users(free, five, 10)
    none = torch.stack([lists[int(u)] for u in five.user_ids])
    shared = (top.unsqueeze(2) == none.unsqueeze(1)).any(2).sum(1)
    assert int(shared.max()) <= 3
    assert int((before.unsqueeze(2) == none.unsqueeze(1)).any(2).sum(1).max()) > 3  # it binds
    for t in range(len(top)):  # what stays of the list is what ranked best of it before
        kept = [i for i in top[t].tolist() if i in set(none[t].tolist())]
        assert kept == [i for i in before[t].tolist() if i in set(none[t].tolist())][: len(kept)]
    one = topn_users(ml100k, "validation", 1)
    assert torch.equal(rank_users(ruled, one, 10), rank_users(free, one, 10))


def test_the_search_judges_lists_as_the_personalisation_rule_shows_them() -> None:
    """With ``keep`` on a draw, every mix the search judges shares at most that many of 10
    with the no-ratings lists (where without it the best mix shares more), and what it
    reports is the limited list's NDCG@10."""
    from melu.training.rank_judge import DISCOUNT
    from melu.training.rank_mix import _search

    setting, parts = _mixing_setting(1)
    start = {**dict.fromkeys(parts, 0.0), "rank.pop_weight": 1.0}  # popularity first
    _, free, _ = _search([setting], start, 1.0, "ndcg")
    setting.keep = torch.full((len(setting.relevant),), 2)
    _, limited, weights = _search([setting], start, 1.0, "ndcg")
    assert free.shared > 0.2 and limited.shared <= 0.2
    scores = personal.limit_shared(setting.scores(weights), setting.empty, setting.keep)
    top = scores.topk(10).indices
    hits = setting.relevant[setting.rows, top].double()
    ndcg = (hits * DISCOUNT).sum(-1) / setting.ideal
    assert float(ndcg.mean()) == pytest.approx(limited.ndcg)
    assert Pooled.of([setting.judge(setting.scores(weights))]).shared <= 0.2


def test_a_setting_subset_counts_a_repeated_user_as_often_as_drawn() -> None:
    """``Setting.subset`` (a bootstrap resample): judging it pools each picked user as many
    times as their row is drawn, with their own parts, relevance and no-ratings list."""
    setting, parts = _mixing_setting()
    mix = {**dict.fromkeys(parts, 0.0), parts[0]: 0.5}
    ndcg, recall, shared = setting.judge(setting.scores(mix))
    assert shared is not None
    rows = torch.tensor([3, 3, 3, 7, 12])
    got = Pooled.of([setting.subset(rows).judge(setting.subset(rows).scores(mix))])
    assert got.ndcg == pytest.approx(float(ndcg[rows].mean()))
    assert got.recall == pytest.approx(float(recall[rows].mean()))
    assert got.shared == pytest.approx(float(shared[rows].mean()))


def test_a_bagged_pick_is_the_mean_of_picks_on_resamples_and_seeded() -> None:
    """``rank_mix._bagged``: one bag is the plain search; on users who are all alike every
    resample picks what the plain search picks (so their mean is it); on real variety the
    mean of B picks lies within the grid's range, is the same for the same seed, and its
    reported figures are what its weights score on all the users."""
    from melu.training.rank_mix import GRID, SEARCHED, _bagged, _search

    setting, parts = _mixing_setting()
    ids = [torch.arange(40) + 100]
    start = dict.fromkeys(parts, 0.0)
    plain = _search([setting], start, 1.0, "ndcg")
    one = _bagged([setting], ids, start, 1.0, "ndcg", 1, True, 1.0, 1, 0)
    assert one[2] == plain[2] and one[1] == plain[1]

    alike = setting.subset(torch.zeros(40, dtype=torch.long))  # 40 copies of user 0
    alone = _search([alike], start, 1.0, "ndcg")[2]
    bagged = _bagged([alike], ids, start, 1.0, "ndcg", 1, True, 1.0, 4, 0)[2]
    assert bagged == pytest.approx(alone)

    _, kept, mean = _bagged([setting], ids, start, 1.0, "ndcg", 1, True, 1.0, 5, 3)
    again = _bagged([setting], ids, start, 1.0, "ndcg", 1, True, 1.0, 5, 3)[2]
    assert mean == again
    for k in SEARCHED:
        assert min(GRID[k]) <= mean[k] <= max(GRID[k])
    assert Pooled.of([setting.judge(setting.scores(mean))]) == kept
    gen = torch.Generator().manual_seed(3)  # the resamples, drawn as ``_bagged`` draws them
    picks = []
    for _ in range(5):
        times = torch.bincount(torch.randint(40, (40,), generator=gen), minlength=40)
        rows = torch.arange(40).repeat_interleave(times)
        picks.append(_search([setting.subset(rows)], start, 1.0, "ndcg")[2])
    assert mean == pytest.approx({k: sum(p[k] for p in picks) / 5 for k in start})


def test_the_walk_blend_tries_every_mix_of_the_three_closed_form_parts() -> None:
    """With ``walk``, the blend stage judges every (EASE^R share, c_l, c_w) of its grid: the
    kept mix scores at least each of them (so each part alone is within reach: here the
    walk alone lists perfectly), and no less than the search without it."""
    import itertools

    from melu.training.rank_mix import EASE_SHARES, GRID, PARTS, _search, mix_objective

    settings = [_mix_setting(0), _mix_setting(1)]
    for s in settings:  # the liked part now misleads too; the walk knows the relevant items
        s.parts[1 + PARTS.index("rank.liked_weight")] *= -10.0
        s.parts[1 + PARTS.index("rank.walk_weight")] = s.relevant.float()
    start = {k: 0.0 for k in PARTS} | {"rank.ease_weight": 1.0, "rank.liked_weight": 1.0}
    first, kept, mix = _search(settings, start, 1.0, "ndcg", blend=True, ease=1.0, walk=True)
    best = mix_objective(kept.ndcg, kept.recall, first.ndcg, first.recall, "ndcg")
    for share, liked, walk in itertools.product(
        EASE_SHARES, GRID["rank.liked_weight"], GRID["rank.walk_weight"]
    ):
        trial = {**start, "rank.ease_weight": share, "rank.liked_weight": liked,
                 "rank.walk_weight": walk}  # fmt: skip
        got = Pooled.of([s.judge(s.scores(trial)) for s in settings])
        assert mix_objective(got.ndcg, got.recall, first.ndcg, first.recall, "ndcg") <= best + 1e-9
    assert kept.ndcg == pytest.approx(1.0) and mix["rank.walk_weight"] > 0
    assert mix["rank.ease_weight"] == 0.0 and mix["rank.liked_weight"] == 0.0
    _, two, _ = _search(settings, start, 1.0, "ndcg", passes=1, blend=True, ease=1.0)
    assert two.ndcg <= kept.ndcg


def _neighbours(alpha: float, keep: int) -> tuple[dict[str, torch.Tensor], RatingRows]:
    """A head whose only part is user-kNN over four training users of ids 1..5 (catalog
    rows 0..4), and those users' ratings as catalog rows."""
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 3), (2, 1), (2, 2), (2, 4), (2, 3), (3, 4)]
    ratings = [5.0, 5.0, 2.0, 4.0, 5.0, 4.0, 5.0, 1.0, 3.0, 4.0]
    rated, liked = torch.zeros(4, V), torch.zeros(4, V)
    for (u, row), r in zip(pairs, ratings, strict=True):
        rated[u, row + 1] = 1.0
        liked[u, row + 1] = float(r >= 4.0)
    zero = torch.zeros(V, V)
    params = {k: v.float() for k, v in head_params(5).items()}
    params.update({
        "rank.item_item": zero, "rank.ease": zero, "rank.liked": zero, "rank.walk": zero,
        "rank.neighbour_rated": rated.T.contiguous(), "rank.neighbour_liked": liked.T.contiguous(),
        "rank.neighbour_norm": rated.sum(1).sqrt(), "rank.neighbour_alpha": torch.tensor([alpha]),
        "rank.neighbour_keep": torch.tensor([float(keep)]),
    })  # fmt: skip
    users, rows = zip(*pairs, strict=True)
    training = RatingRows(
        torch.tensor(users, dtype=torch.int32), torch.tensor(rows, dtype=torch.int32),
        torch.tensor(ratings),
    )  # fmt: skip
    return params, training


@pytest.mark.parametrize(("alpha", "keep"), [(1.0, 0), (2.0, 0), (3.0, 1), (1.0, 2)])
def test_the_neighbour_part_is_the_user_knn_baseline_on_what_they_liked(
    alpha: float, keep: int
) -> None:
    """c_n·Σ_v w_v·Y[i, v] scores every id as the user-kNN baseline (target: liked) scores
    the catalog rows, for each α and K; a repeated support id counts once; unknown ids,
    training users' episodes and a head without neighbours get 0."""
    params, training = _neighbours(alpha, keep)
    catalog_ids = torch.arange(1, V)  # catalog row r is id r + 1
    knn = UserKnnRanker(
        Neighbours.from_rows(training, V - 1, 4.0), alpha, keep, "liked", torch.zeros(V - 1)
    )
    c = torch.tensor([0.0, 0.5, 2.0, 3.0, 4.0])  # per support-size bucket
    params["rank.neighbour_weight"] = c
    for support in ([1, 2], [0], [3, 4]):
        expected = knn.scores(Supports(
            torch.zeros(1), torch.tensor([support]), torch.full((1, len(support)), 4.0),
            torch.ones(1, len(support), dtype=torch.bool),
        ))[0]  # fmt: skip
        bag = Bag(torch.tensor([support]) + 1, torch.zeros(1, len(support), dtype=torch.long),
                  torch.ones(1, len(support), dtype=torch.bool))  # fmt: skip
        got = ranking.neighbour_scores(params, bag, catalog_ids)[0]
        bucket = ranking.SUPPORT_BUCKETS.index(len(support) if len(support) < 2 else 2)
        assert got == pytest.approx(float(c[bucket]) * expected, abs=1e-5)
    twice = Bag(torch.tensor([[2, 3, 2, 0]]), torch.zeros(1, 4, dtype=torch.long),
                torch.tensor([[True, True, True, True]]))  # fmt: skip
    once = Bag(torch.tensor([[2, 3]]), torch.zeros(1, 2, dtype=torch.long),
               torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    params["rank.neighbour_weight"] = torch.ones(5)  # the same at 2 and 4 slots
    assert torch.allclose(
        ranking.neighbour_scores(params, twice, ids), ranking.neighbour_scores(params, once, ids)
    )
    assert float(ranking.neighbour_scores(params, once, ids)[0, 0]) == 0.0  # unknown id
    others = torch.tensor([[1, 4, 5]])  # the reasons: each vote shared among the bag items
    shares = reasons.contributions(params, twice, others)  # a neighbour rated, summing to it
    assert shares.sum(-1)[0] == pytest.approx(ranking.neighbour_scores(params, twice, others)[0])
    assert float(shares[0, :, 2:].abs().sum()) == 0.0  # the repeated id and the unknown one
    rated = Bag(once.ids, once.levels, once.mask, torch.ones(1, V))
    assert float(ranking.neighbour_scores(params, rated, ids).abs().sum()) == 0.0
    none = {**params, **{k: params[k][..., :0] for k in ranking.FREE_LAST}}
    assert float(ranking.neighbour_scores(none, once, ids).abs().sum()) == 0.0
