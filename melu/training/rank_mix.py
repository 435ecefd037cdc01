"""The ranking head's mixing weights, picked on validation users for each support size.

The head (``melu.model.ranking``) adds its parts, each at a weight per support-size bucket
(``ranking.SUPPORT_BUCKETS``): popularity π, the adapted predicted rating γ (the
meta-learned rating part after the one ``adapt()``), co-occurrence c, the parts trained by
likelihood λ_L (item bias, factors, the learned item–item matrix), EASE^R c_e, the
liked-target item–item part c_l, RP³β's walk c_w and user-kNN c_n.
Training them by the likelihood of training users' held-out items moves them away from what
ranks *new* users well (RESULTS.md, "What was tried for the head"), so ``pick_mixing``
chooses them the way EASE^R's λ is chosen: NDCG@10 and Recall@10 of the validation users at
the validation support sizes that fall in each bucket (several seeded draws of each user's
support, pooled). Each bucket's search (``train.rank_mix_passes`` times, each from the
last one's mix) first blends the closed-form item–item parts (EASE^R at 0, ½ or all of
its start weight × every c_l × every c_w — ``train.rank_mix_walk_blend``, the default; off,
the walk is only tried after the grid — so each part alone is among the mixes tried),
then tries every (π, γ, c) of the grid — π may be negative, a popularity penalty, which
validation users reward on ML-100K — then c_l, c_w, c_n, then λ_L. Optionally each bucket's
weights are the mean of picks on bootstrap resamples of its users (``train.rank_mix_bags``).
Optionally the search keeps only mixes whose lists share at most ``max_shared`` with the
no-ratings list on average (personalisation; the price in NDCG@10 is in RESULTS.md). Test
users are never looked at.

Each part's scores are computed once per validation setting (the adapted rating included),
so a candidate mix costs a weighted sum and a top-10, not a new adaptation.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from melu.config import RankMixMetric, RankMixSizes
from melu.evaluation.topn import TopNUsers
from melu.evaluation.topn_model import ModelRanker
from melu.model import personal, ranking
from melu.training.rank_judge import PARTS, Pooled, Setting

SEARCHED = PARTS[:3]  # searched jointly, after the blend of the closed-form parts
# each searched alone, in this order
AFTER = ("rank.liked_weight", "rank.walk_weight", "rank.neighbour_weight", "rank.learned_weight")
WALK = "rank.walk_weight"  # RP³β's walk: in the blend stage too with ``walk_blend``
EASE_SHARES = (0.0, 0.5, 1.0)  # EASE^R's weight in the blend stage, as shares of its start
GRID: dict[str, tuple[float, ...]] = {
    "rank.pop_weight": (
        -5.0, -3.0, -2.0, -1.5, -1.0, -0.7, -0.5, -0.3, -0.2, -0.1, -0.03,
        0.0, 1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0,
    ),
    "rank.rating_weight": (-0.3, -0.03, 0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    "rank.cooc_weight": (0.0, 0.1, 0.3, 1.0, 3.0, 10.0),
    "rank.learned_weight": (0.0, 0.3, 1.0, 2.0),  # the trained parts (0 before training)
    # the liked-target item–item part, whose top validation score is 5 logits at weight 1
    "rank.liked_weight": (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
    # RP³β's walk, scaled alike (its top validation score alone: 5 logits at weight 1)
    "rank.walk_weight": (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
    # user-kNN, scaled alike
    "rank.neighbour_weight": (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
}  # fmt: skip


# The validation support sizes each bucket of ``ranking.SUPPORT_BUCKETS`` (0, 1, 2-3, 4-7,
# 8+ ratings) is picked on: "spread" covers the bucket's range (on held-out halves of the
# validation users it ranks them better at 3, 5 and 20 ratings than "one": RESULTS.md);
# "one" is one size per bucket, the sizes the kept head epoch is judged at.
MIX_SIZES: dict[RankMixSizes, tuple[tuple[int, ...], ...]] = {
    "spread": ((0,), (1,), (2, 3), (4, 5, 7), (8, 10, 15, 20)),
    "one": ((0,), (1,), (3,), (5,), (10,)),
}


def mix_draws(sizes: tuple[int, ...], draws: int) -> list[tuple[int, int]]:
    """(support size, seed) of each validation draw one bucket is picked on: ``draws`` of
    them but at least one per size, cycling through ``sizes``, the k-th with seed k; a
    single one for the no-ratings bucket (its list does not depend on a draw)."""
    if sizes == (0,):
        return [(0, 0)]
    return [(sizes[k % len(sizes)], k) for k in range(max(draws, len(sizes)))]


def mix_objective(
    ndcg: float, recall: float, start_ndcg: float, start_recall: float, metric: RankMixMetric
) -> float:
    """What a bucket's pick maximises: NDCG@10 ("ndcg"), or NDCG@10 and Recall@10 each
    relative to the start's, summed ("ndcg+recall")."""
    if metric == "ndcg":
        return ndcg
    return ndcg / max(start_ndcg, 1e-9) + recall / max(start_recall, 1e-9)


@dataclass
class MixChoice:
    """The weights picked (name → (B,) per bucket) and each bucket's validation NDCG@10
    and Recall@10 before (the start) and after."""

    weights: dict[str, Tensor]
    before: list[float]
    after: list[float]
    recall_before: list[float]
    recall_after: list[float]

    def objective(self, b: int, metric: RankMixMetric) -> float:
        """Bucket ``b``'s objective (``mix_objective``) of the kept mix on its draws."""
        return mix_objective(
            self.after[b], self.recall_after[b], self.before[b], self.recall_before[b], metric
        )


def _search(
    settings: Sequence[Setting],
    current: dict[str, float],
    max_shared: float,
    metric: RankMixMetric,
    passes: int = 1,
    blend: bool = True,
    ease: float = 1.0,
    walk: bool = False,
) -> tuple[Pooled, Pooled, dict[str, float]]:
    """The best mix for one bucket. Each of ``passes`` passes, from the last one's mix:
    the blend of the two closed-form item–item parts (EASE^R at 0, ½ or 1 of ``ease``, its
    start weight, × every c_l of the grid; with ``walk`` also × every c_w of the grid, so
    that each of the three parts alone is among the mixes tried; skipped without
    ``blend``), then every (π, γ, c) of the grid, then c_l, c_w, c_n, then λ_L. A mix replaces
    ``current`` only if it raises the objective
    (``metric``: "ndcg", NDCG@10; or "ndcg+recall", NDCG@10 and Recall@10 each relative to
    the start's, summed) and keeps the mean share with the no-ratings lists within
    ``max_shared`` (the start is kept if nothing does). Returns the start's figures, the
    kept mix's and the kept mix."""
    start = Pooled.of([s.judge(s.scores(current)) for s in settings])

    def objective(got: Pooled) -> float:
        return mix_objective(got.ndcg, got.recall, start.ndcg, start.recall, metric)

    kept = start
    best = objective(start) if start.shared <= max_shared else -1.0

    def better(got: Pooled) -> bool:
        """Whether ``got`` beats the best so far within the cap (then it is the best)."""
        nonlocal best, kept
        if objective(got) > best + 1e-6 and got.shared <= max_shared:
            best, kept = objective(got), got
            return True
        return False

    def trial(weights: dict[str, float]) -> bool:
        return better(Pooled.of([s.judge(s.scores(weights)) for s in settings]))

    pop, rate, cooc = (1 + PARTS.index(k) for k in SEARCHED)  # their rows of ``parts``
    w_coocs = torch.tensor(GRID[SEARCHED[2]]).view(-1, 1, 1)  # (C, 1, 1)
    walk_row, w_walks = 1 + PARTS.index(WALK), torch.tensor(GRID[WALK]).view(-1, 1, 1)
    for _ in range(passes):
        blends = itertools.product(EASE_SHARES, GRID["rank.liked_weight"]) if blend else ()
        for share, liked in blends:
            mix = {**current, "rank.ease_weight": share * ease, "rank.liked_weight": liked}
            if not walk:
                if trial(mix):
                    current = mix
                continue
            # every c_w of the grid at once (W, U, I), judged in the grid's order
            without = [s.scores({**mix, WALK: 0.0}) for s in settings]
            pooled = Pooled.each([
                s.judge(f + w_walks * s.parts[walk_row])
                for f, s in zip(without, settings, strict=True)
            ])  # fmt: skip
            for w_walk, got in zip(GRID[WALK], pooled, strict=True):
                if better(got):
                    current = {**mix, WALK: w_walk}
        fixed = [s.scores({**current, **dict.fromkeys(SEARCHED, 0.0)}) for s in settings]
        for w_pop in GRID[SEARCHED[0]]:  # partial sums reused down the nested grid
            with_pop = [f + w_pop * s.parts[pop] for f, s in zip(fixed, settings, strict=True)]
            for w_rate in GRID[SEARCHED[1]]:
                with_rate = [
                    p + w_rate * s.parts[rate] for p, s in zip(with_pop, settings, strict=True)
                ]
                # every c of the grid at once (C, U, I), judged in the grid's order
                pooled = Pooled.each([
                    s.judge(r + w_coocs * s.parts[cooc])
                    for r, s in zip(with_rate, settings, strict=True)
                ])  # fmt: skip
                for w_cooc, got in zip(GRID[SEARCHED[2]], pooled, strict=True):
                    if better(got):
                        picked = zip(SEARCHED, (w_pop, w_rate, w_cooc), strict=True)
                        current = {**current, **dict(picked)}
        for name in AFTER:  # from the best (π, γ, c), one weight at a time
            for value in GRID[name]:
                if trial({**current, name: value}):
                    current = {**current, name: value}
    return start, kept, current


def _bagged(
    settings: Sequence[Setting],
    user_ids: Sequence[Tensor],
    current: dict[str, float],
    max_shared: float,
    metric: RankMixMetric,
    passes: int,
    blend: bool,
    ease: float,
    bags: int,
    seed: int,
    walk: bool = False,
) -> tuple[Pooled, Pooled, dict[str, float]]:
    """``_search`` on the draws ``settings`` (each of the users ``user_ids[d]`` (U_d,)), or,
    with ``bags`` > 1, the mean of the mixes ``_search`` picks on ``bags`` bootstrap
    resamples of the users (Breiman's bagging: a grid's argmax on a few validation users is
    an unstable pick, and the mean of picks on resamples varies less). A user is resampled
    with all their draws; the resamples are seeded by ``seed``. Each bag's pick keeps the
    cap ``max_shared``; their mean is a weighted sum of capped mixes, not checked against
    it. Returns the start's figures and the kept mix's on all the users, and the kept mix."""
    if bags <= 1:
        return _search(settings, current, max_shared, metric, passes, blend, ease, walk)
    ids = torch.unique(torch.cat(list(user_ids)))  # sorted
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for _ in range(bags):
        draw = torch.randint(len(ids), (len(ids),), generator=gen)
        times = torch.bincount(draw, minlength=len(ids))  # (N,): how often each user is in
        sample = [
            s.subset(torch.arange(len(u)).repeat_interleave(times[torch.searchsorted(ids, u)]))
            for s, u in zip(settings, user_ids, strict=True)
        ]
        picked.append(_search(sample, current, max_shared, metric, passes, blend, ease, walk)[2])
    mean = {k: sum(p[k] for p in picked) / bags for k in current}
    start = Pooled.of([s.judge(s.scores(current)) for s in settings])
    return start, Pooled.of([s.judge(s.scores(mean)) for s in settings]), mean


def pick_mixing(
    ranker: ModelRanker,
    params: Mapping[str, Tensor],
    users: Sequence[Sequence[TopNUsers]],
    threshold: float,
    max_shared: float = 1.0,
    metric: RankMixMetric = "ndcg+recall",
    shared_from: int = 1,
    passes: int = 1,
    blend: bool = True,
    keep_shared: int = personal.SHOWN,
    bags: int = 1,
    seed: int = 0,
    walk_blend: bool = False,
) -> MixChoice:
    """Each bucket's π, γ, c, c_l, λ_L searched on the validation draws ``users[b]`` (one
    sequence per bucket of ``ranking.SUPPORT_BUCKETS``, in order, each of seeded draws of
    that bucket's support size; bucket 0 has no ratings), starting from ``params``'
    weights, by ``metric`` (see ``_search``). With ``max_shared`` < 1 the buckets of
    ``shared_from`` ratings or more (at least 1) keep only mixes whose lists share at most
    that on average with the user's no-ratings list (bucket 0's, as picked). ``passes``:
    how many times each bucket's search runs, each from the last one's mix; ``blend``:
    whether it searches the blend of EASE^R and the liked-target part first (see
    ``_search``; off only to compare with the search before it). With ``keep_shared`` <
    SHOWN those buckets' lists are judged as the head shows them, holding at most that many
    of the no-ratings list (``personal.limit_shared``, ``rank.shared_cut``). With ``bags``
    > 1 each bucket's weights are the mean of the picks on that many bootstrap resamples
    of its validation users (``_bagged``, seeded by ``seed`` and the bucket). With
    ``walk_blend`` the blend stage also tries every weight of RP³β's walk (``_search``)."""
    weights = {k: params[k].detach().float().cpu().clone() for k in PARTS}
    # EASE^R's start weight is the same in every bucket, and the no-ratings bucket never
    # moves it (an empty support gives EASE^R no scores), so a re-pick still finds it here
    ease = float(weights["rank.ease_weight"].max())
    saved = dict(ranker.params)
    before, after, recall_before, recall_after = [], [], [], []
    empty: dict[int, Tensor] | None = None  # user id → their no-ratings list (10,)
    for b, draws in enumerate(users):
        settings = [Setting.of(ranker, params, u, threshold) for u in draws]
        capped = b > 0 and ranking.SUPPORT_BUCKETS[b] >= shared_from and empty is not None
        cap = max_shared if capped else 1.0
        limited = capped and keep_shared < personal.SHOWN
        if cap < 1.0 or limited:
            assert empty is not None
            for s, u in zip(settings, draws, strict=True):
                s.empty, s.keep = _lists(empty, u.user_ids, keep_shared if limited else None)
        current = {k: float(weights[k][b]) for k in PARTS}
        ids = [u.user_ids for u in draws]
        start, kept, current = _bagged(
            settings,
            ids,
            current,
            cap,
            metric,
            passes,
            blend,
            ease,
            bags,
            1_000 * seed + b,
            walk_blend,
        )
        before.append(start.ndcg)
        after.append(kept.ndcg)
        recall_before.append(start.recall)
        recall_after.append(kept.recall)
        for k in PARTS:
            weights[k][b] = current[k]
        if b == 0 and (max_shared < 1.0 or keep_shared < personal.SHOWN):
            top = settings[0].scores(current).topk(10, dim=1).indices
            empty = {int(u): row for u, row in zip(draws[0].user_ids, top, strict=True)}
    ranker.params = saved
    return MixChoice(weights, before, after, recall_before, recall_after)


def _lists(
    empty: Mapping[int, Tensor], user_ids: Tensor, keep: int | None
) -> tuple[Tensor, Tensor | None]:
    """The users' no-ratings lists (U, 10) and, with ``keep``, how many of each may stay
    (U,). A user without one (not among bucket 0's) shares nothing: a list of −1, and
    ``keep`` = SHOWN, which changes nothing."""
    missing = torch.full((personal.SHOWN,), -1, dtype=torch.long)
    rows = torch.stack([empty.get(int(i), missing) for i in user_ids])
    if keep is None:
        return rows, None
    known = (rows >= 0).all(1)
    return rows, torch.where(known, keep, personal.SHOWN)


__all__ = ["GRID", "MIX_SIZES", "PARTS", "MixChoice", "mix_draws", "pick_mixing"]
