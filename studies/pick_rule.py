"""Which rule for picking the ranking head's part weights ranks unseen users best?

For each fold of a finished ``melu cv`` study, the fold's validation users are split in two
seeded halves; each rule picks the head's part weights per support-size bucket with the
library's own ``pick_mixing`` on one half (from the head's start: EASE^R alone), and the
picked head ranks the other half's users at n = 0, 1, 3, 5, 10, 20 ratings; then the halves
swap. Rules differ in what the pick sees: how many seeded support draws per user, which
support sizes stand for each bucket (``train.rank_mix_draws``, ``rank_mix_sizes``), what cap
on the share with the no-ratings list (``rank_max_shared``). Prints per n each rule's
NDCG@10, Recall@10 and share with the no-ratings list on the users it did not pick on, with
the paired difference to the first rule (mean ± 1.96 SE over users), and the lists'
catalog coverage. Only validation users are used; test users are never looked at.

    python studies/pick_rule.py --study runs/cv-ml-100k
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from loo_pick import TRAIN, LooRanker, allow_training_users, joined
from torch import Tensor

from melu.bundle import load_bundle
from melu.evaluation.topn import (
    Supports,
    TopNProtocol,
    TopNUsers,
    rank_users,
    topn_users,
    user_metrics,
    without_support,
)  # fmt: skip
from melu.evaluation.topn_model import ModelRanker
from melu.model.personal import SHOWN, limit_shared, list_of
from melu.model.ranking import FREE_LAST
from melu.prepare import prepare
from melu.training.rank_mix import MIX_SIZES, PARTS, mix_draws, pick_mixing
from melu.training.rank_train import EASE_START_MIX, EASE_SUPPORTS, neighbour_start

SCORED = (0, 1, 3, 5, 10, 20)


@dataclass(frozen=True)
class Rule:
    """How a pick is made: the support sizes standing for each bucket (0, 1, 2-3, 4-7, 8+),
    draws per bucket (as ``mix_draws`` makes them) and the cap on the mean share with the
    no-ratings list (``train.rank_max_shared``; 1: none)."""

    sizes: tuple[tuple[int, ...], ...]
    draws: int = 2
    cap: float = 1.0
    cap_from: int = 1  # the fewest ratings the cap applies to (``train.rank_shared_from``)
    tolerance: float | None = None  # keep a bucket's cap only if its pick objective (the
    # sum of NDCG@10 and Recall@10 relative to the start's) is within this of the uncapped
    liked: bool = True  # whether the head has its liked-target item–item part
    walk: bool = True  # whether the head has its RP³β walk part (bundles since the 7th pass)
    passes: int = 1  # how many times each bucket's search runs (``pick_mixing``)
    blend: bool = True  # whether the search starts with EASE^R × the liked-target part
    alone: bool = False  # no pick: the liked-target part alone (popularity breaking ties)
    keep: int | None = None  # at most this many of the no-ratings list in a top-10
    keep_from: int = 1  # the fewest ratings ``keep`` applies to
    keep_in_pick: bool = False  # whether the pick judges lists with ``keep`` applied (then
    # ``keep_from`` is also where the cap starts)
    popular: int = 0  # > 0: ``keep`` holds the list to this many most popular items instead
    bags: int = 1  # the mean of the picks on this many bootstrap resamples (``rank_mix_bags``)
    walk_blend: bool = False  # the walk's weight inside the blend stage (``rank_mix_walk_blend``)
    tail: int = 0  # > 0: show the least popular of each user's top ``tail`` first (TailRanker)
    tail_penalty: float | None = None  # ... or their scores less this × log(1 + popularity)
    tail_from: int = 4  # the fewest ratings the tail re-rank applies to
    pick_share: float = 1.0  # the pick sees only this seeded share of its half's users
    train_users: bool = False  # the pick also sees the training users, each left out of the
    # head's statistics (``loo_pick.LooRanker``)
    train_rating: bool = False  # ... their adapted predicted rating kept (fit on them) or 0
    neighbours: bool = False  # whether the head has its user-kNN part (α, K picked on the
    # pick half; ``train.rank_neighbours``)


RULES: dict[str, Rule] = {  # the first is the yardstick
    "one size per bucket (1/3/5/10), 2 draws": Rule(MIX_SIZES["one"], 2),
    "one size per bucket, 4 draws": Rule(MIX_SIZES["one"], 4),
    "spread (1; 2, 3; 4, 5, 7; 8-20), >= 2 draws": Rule(MIX_SIZES["spread"], 2),
    "spread, >= 4 draws": Rule(MIX_SIZES["spread"], 4),
    "spread, >= 2 draws, shared <= 0.40": Rule(MIX_SIZES["spread"], 2, 0.40),
    "spread, >= 2 draws, shared <= 0.35": Rule(MIX_SIZES["spread"], 2, 0.35),
    "spread, >= 2 draws, shared <= 0.40 from 4 ratings": Rule(MIX_SIZES["spread"], 2, 0.40, 4),
    "spread, >= 2 draws, shared <= 0.35 from 4 ratings": Rule(MIX_SIZES["spread"], 2, 0.35, 4),
    "spread, >= 2 draws, shared <= 0.30 from 4 ratings": Rule(MIX_SIZES["spread"], 2, 0.30, 4),
    "spread, shared <= 0.40 from 4 where it costs <= 0.01": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, 0.01
    ),
    "spread, shared <= 0.40 from 4 where it costs <= 0.03": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, 0.03
    ),
    "rule 6 without the liked-target part": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, liked=False, blend=False
    ),
    "rule 6, each bucket searched twice": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, blend=False
    ),
    "rule 6, the liked part added after the grid (no blend)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, blend=False
    ),
    "rule 6, blend first, 1 pass": Rule(MIX_SIZES["spread"], 2, 0.40, 4, passes=1),
    "rule 6, blend first, 2 passes": Rule(MIX_SIZES["spread"], 2, 0.40, 4, passes=2),
    "no pick: the liked-target part alone": Rule(MIX_SIZES["spread"], alone=True),
    "rule 15, keep <= 3 of the no-ratings list from 1 rating": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=3
    ),
    "rule 15, keep <= 4 from 1 rating": Rule(MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=4),
    "rule 15, keep <= 5 from 1 rating": Rule(MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=5),
    "rule 15 uncapped, keep <= 3 from 1 rating": Rule(MIX_SIZES["spread"], 2, passes=2, keep=3),
    "rule 15 uncapped, keep <= 4 from 1 rating": Rule(MIX_SIZES["spread"], 2, passes=2, keep=4),
    "rule 15 uncapped, keep <= 3 from 4 ratings, in the pick": Rule(
        MIX_SIZES["spread"], 2, passes=2, keep=3, keep_from=4, keep_in_pick=True
    ),
    "rule 15 uncapped, keep <= 4 from 4 ratings, in the pick": Rule(
        MIX_SIZES["spread"], 2, passes=2, keep=4, keep_from=4, keep_in_pick=True
    ),
    "rule 15, keep <= 3 from 4 ratings, in the pick": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=3, keep_from=4, keep_in_pick=True
    ),
    "rule 15, keep <= 3 from 4 ratings, after the pick": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=3, keep_from=4
    ),
    "rule 15, <= 3 of the 50 most popular from 4 ratings, after the pick": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=3, keep_from=4, popular=50
    ),
    "rule 15, <= 5 of the 50 most popular from 4 ratings, after the pick": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, keep=5, keep_from=4, popular=50
    ),
    "rule 15 without the walk part (the sixth pass's head)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, walk=False
    ),
    "rule 15, the mean of picks on 8 bootstrap resamples": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, bags=8
    ),
    "rule 15, the mean of picks on 16 bootstrap resamples": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, bags=16
    ),
    "rule 15, 1 pass, the mean of picks on 8 bootstrap resamples": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=1, bags=8
    ),
    "rule 15, from 4 ratings the 10 least popular of the top 12": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=12
    ),
    "rule 15, from 4 ratings the 10 least popular of the top 15": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=15
    ),
    "rule 15, from 4 ratings the 10 least popular of the top 20": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=20
    ),
    "rule 15, from 4 ratings the top 20 less 0.5 log(1 + popularity)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=20, tail_penalty=0.5
    ),
    "rule 15, from 4 ratings the top 20 less 1.0 log(1 + popularity)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=20, tail_penalty=1.0
    ),
    "rule 15, from 1 rating the 10 least popular of the top 15": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, tail=15, tail_from=1
    ),
    "rule 15, the walk in the blend (EASE^R x liked x walk)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, walk_blend=True
    ),
    "rule 38 picked on half of its half (a quarter of the validation users)": Rule(
        MIX_SIZES["spread"], 2, 0.40, 4, passes=2, walk_blend=True, pick_share=0.5
    ),
    "rule 38 with >= 4 draws per bucket": Rule(
        MIX_SIZES["spread"], 4, 0.40, 4, passes=2, walk_blend=True
    ),
    "rule 38 with >= 8 draws per bucket": Rule(
        MIX_SIZES["spread"], 8, 0.40, 4, passes=2, walk_blend=True
    ),
    "rule 40 + the training users, left out, their predicted rating 0": Rule(
        MIX_SIZES["spread"], 4, 0.40, 4, passes=2, walk_blend=True, train_users=True
    ),
    "rule 40 + the training users, left out, their predicted rating kept": Rule(
        MIX_SIZES["spread"],
        4,
        0.40,
        4,
        passes=2,
        walk_blend=True,
        train_users=True,
        train_rating=True,
    ),
    "rule 40 + the user-kNN part": Rule(
        MIX_SIZES["spread"], 4, 0.40, 4, passes=2, walk_blend=True, neighbours=True
    ),
}


def candidate_scores(ranker: ModelRanker, supports: Supports) -> Tensor:
    """(U, I) ``ranker``'s scores on the CPU with each user's support items at −inf."""
    s = ranker.scores(supports).float().cpu()
    allowed = without_support(torch.ones(s.shape[1], dtype=torch.bool),
                              supports.items, supports.mask)  # fmt: skip
    return torch.where(allowed, s, -torch.inf)


def catalog_counts(ranker: ModelRanker) -> Tensor:
    """(I,) each catalog row's count of training raters (``rank.item_count`` of its id)."""
    return ranker.params["rank.item_count"].cpu()[ranker.catalog.ids.cpu()]


class KeepRanker:
    """``ranker``'s scores with at most ``keep`` items of each user's no-ratings list (their
    top-10 with no support) in reach of a top-10 (``limit_shared``), from ``keep_from``
    ratings on; support items are out before the limit counts."""

    def __init__(self, ranker: ModelRanker, keep: int, keep_from: int, popular: int = 0) -> None:
        self.ranker, self.keep, self.keep_from = ranker, keep, keep_from
        self.popular = popular  # > 0: hold the list to the most popular items instead

    def scores(self, supports: Supports) -> Tensor:
        s = candidate_scores(self.ranker, supports)
        if self.popular:
            top = catalog_counts(self.ranker).topk(self.popular).indices
            none = top.expand(len(s), -1)
        else:
            empty = dataclasses.replace(supports, mask=torch.zeros_like(supports.mask))
            none = list_of(self.ranker.scores(empty).float().cpu())
        n = supports.mask.sum(1)
        keep = torch.where(n >= self.keep_from, self.keep, SHOWN)
        return limit_shared(s, none, keep)


class TailRanker:
    """``ranker``'s scores re-ranked for aggregate diversity (Adomavicius & Kwon 2012, "Improving
    aggregate recommendation diversity using ranking-based techniques"): from ``tail_from``
    ratings on, of each user's top ``pool`` candidates the least popular (training raters)
    come first, or, with ``penalty``, those candidates are ordered by their score less
    ``penalty`` · log(1 + popularity); every other item stays below them, in its order."""

    def __init__(
        self, ranker: ModelRanker, pool: int, penalty: float | None, tail_from: int
    ) -> None:
        self.ranker, self.pool, self.penalty, self.tail_from = ranker, pool, penalty, tail_from

    def scores(self, supports: Supports) -> Tensor:
        s = candidate_scores(self.ranker, supports)
        value, top = s.topk(self.pool, dim=1)  # (U, pool)
        pop = torch.log1p(catalog_counts(self.ranker).float())[top]
        order = -pop if self.penalty is None else value - self.penalty * pop
        lifted = s.clone().scatter_(1, top, 1e6 + order)  # the pool above everything else
        n = supports.mask.sum(1, keepdim=True)
        return torch.where(n >= self.tail_from, lifted, s)


METRICS = ("NDCG@10", "Recall@10", "shared with the no-ratings list")


def subset(users: TopNUsers, keep: Tensor) -> TopNUsers:
    """``users`` restricted to the rows where ``keep`` (U,) bool."""
    s = users.supports
    supports = dataclasses.replace(
        s, user_rows=s.user_rows[keep], items=s.items[keep], ratings=s.ratings[keep],
        mask=s.mask[keep],
    )  # fmt: skip
    return dataclasses.replace(
        users, supports=supports, heldout_items=users.heldout_items[keep],
        heldout_ratings=users.heldout_ratings[keep], heldout_mask=users.heldout_mask[keep],
        user_ids=users.user_ids[keep],
    )  # fmt: skip


def start_weights(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The head's part weights before any pick (``rank_train._start`` with rank_start=ease):
    EASE^R's back at its start weight in every bucket (the largest picked one: the
    no-ratings bucket never moves it), the rest as ``EASE_START_MIX``; the personalisation
    rule off (each rule here says whether it has one)."""
    out = {k: torch.full_like(params[k], v) for k, v in EASE_START_MIX.items()}
    ease = params["rank.ease_weight"]
    out["rank.shared_cut"] = torch.zeros_like(params["rank.shared_cut"])
    return {**out, "rank.ease_weight": torch.full_like(ease, float(ease.max()))}


def fold_rules(
    model_dir: Path, data_dir: str, rules: dict[str, Rule]
) -> dict[str, dict[int, tuple[list[Tensor], list[float]]]]:
    """rule → n → (per-user NDCG@10, Recall@10 and share of the top-10 also in the user's
    no-ratings list, each (U,), of the users the rule did not pick on, both halves in
    order; the catalog coverage of each half's lists)."""
    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    ranker.params = {**ranker.params, **start_weights(dict(ranker.params))}
    base = dict(ranker.params)
    threshold = TopNProtocol().threshold
    cache: dict[tuple[int, int, str], TopNUsers] = {}

    def users(n: int, seed: int, role: str = "validation") -> TopNUsers:
        if (n, seed, role) not in cache:
            got = topn_users(prepared, role, n, TopNProtocol(seed=seed))  # type: ignore[arg-type]
            cache[n, seed, role] = got
        return cache[n, seed, role]

    loos: dict[bool, LooRanker] = {}  # training users left out, by whether r̂ is kept

    ids = users(0, 0).user_ids
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    halves = [set(ids[order[: len(ids) // 2]].tolist()), set(ids[order[len(ids) // 2 :]].tolist())]

    def half(u: TopNUsers, h: int, share: float = 1.0) -> TopNUsers:
        """``u``'s users in half ``h``; with ``share`` < 1 only a seeded share of them."""
        members = halves[h]
        if share < 1.0:
            ordered = sorted(members)
            keep = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(1))
            members = {ordered[i] for i in keep[: round(share * len(ordered))].tolist()}
        return subset(u, torch.tensor([int(i) in members for i in u.user_ids]))

    out: dict[str, dict[int, tuple[list[Tensor], list[float]]]] = {}
    picks: dict[tuple[Rule, int], dict[str, Tensor]] = {}  # rules that differ only after the pick
    for name, rule in rules.items():
        got: dict[int, tuple[list[list[Tensor]], list[float]]] = {
            n: ([[], [], []], []) for n in SCORED
        }
        for pick_half in (0, 1):
            mix_users = [
                [
                    half(users(n, seed), pick_half, rule.pick_share)
                    for n, seed in mix_draws(bucket, rule.draws)
                ]
                for bucket in rule.sizes
            ]
            head = dict(base)
            for part, kept in (("liked", rule.liked), ("walk", rule.walk)):
                if not kept and f"rank.{part}" in base:
                    head[f"rank.{part}"] = torch.zeros_like(base[f"rank.{part}"])
            for free in FREE_LAST:  # no user-kNN part unless the rule has one
                head[free] = base[free][..., :0]
            if rule.neighbours:  # α and K on the pick half, at 3, 5 and 10 ratings
                on = [half(users(n, 0), pick_half) for n in EASE_SUPPORTS]
                n_ids = len(base["rank.item_count"])
                head.update(
                    neighbour_start(prepared, ranker.catalog.ids, n_ids, on, threshold).params
                )
            ranker.params = dict(head)
            pick_key = (
                dataclasses.replace(rule, tail=0, tail_penalty=None, tail_from=4),
                pick_half,
            )
            if pick_key in picks:
                weights = picks[pick_key]
            elif rule.alone:  # no pick: the liked part alone, popularity breaking ties
                alone = {"rank.pop_weight": 1e-3, "rank.liked_weight": 1.0}
                weights = {k: torch.full_like(head[k], alone.get(k, 0.0)) for k in PARTS}
            else:
                in_pick = rule.keep if rule.keep is not None and rule.keep_in_pick else SHOWN
                picker: ModelRanker | LooRanker = ranker
                if rule.train_users:  # the same draws of the training users join each bucket
                    if not loos:
                        allow_training_users(prepared)
                    if rule.train_rating not in loos:
                        loos[rule.train_rating] = LooRanker(ranker, prepared, rule.train_rating)
                    picker = loos[rule.train_rating]
                    mix_users = [
                        [joined(u, users(n, seed, TRAIN))
                         for u, (n, seed) in zip(draws, mix_draws(bucket, rule.draws), strict=True)]
                        for draws, bucket in zip(mix_users, rule.sizes, strict=True)
                    ]  # fmt: skip
                choice = pick_mixing(
                    picker, head, mix_users, threshold, rule.cap,  # type: ignore[arg-type]
                    shared_from=rule.keep_from if rule.keep_in_pick else rule.cap_from,
                    passes=rule.passes, blend=rule.blend, keep_shared=in_pick, bags=rule.bags,
                    walk_blend=rule.walk_blend,
                )  # fmt: skip
                weights = choice.weights
            if rule.tolerance is not None and pick_key not in picks:  # cap where it's cheap
                free = pick_mixing(ranker, head, mix_users, threshold)
                for b in range(len(rule.sizes)):
                    if (
                        choice.objective(b, "ndcg+recall")
                        < free.objective(b, "ndcg+recall") - rule.tolerance
                    ):
                        for k in PARTS:
                            weights[k][b] = free.weights[k][b]
            picks[pick_key] = weights
            ranker.params = {**head, **weights}
            empty = half(users(0, 0), 1 - pick_half)
            lists = dict(zip(empty.user_ids.tolist(), rank_users(ranker, empty, 10), strict=True))
            shown: ModelRanker | KeepRanker | TailRanker = ranker
            if rule.keep is not None:
                shown = KeepRanker(ranker, rule.keep, rule.keep_from, rule.popular)
            if rule.tail:
                shown = TailRanker(ranker, rule.tail, rule.tail_penalty, rule.tail_from)
            for n in SCORED:
                scored = half(users(n, 0), 1 - pick_half)
                top = rank_users(shown, scored, 10)
                m = user_metrics(top, scored.relevant(threshold), (10,))
                none = torch.stack([lists[int(u)] for u in scored.user_ids])
                shared = (top.unsqueeze(2) == none.unsqueeze(1)).any(2).double().mean(1)
                for row, v in zip(got[n][0], (m["ndcg@10"], m["recall@10"], shared), strict=True):
                    row.append(v)
                got[n][1].append(len(torch.unique(top)) / len(scored.candidates))
        out[name] = {n: ([torch.cat(v) for v in rows], cov) for n, (rows, cov) in got.items()}
        picks = {k.removeprefix("rank."): [round(x, 3) for x in v.tolist()]
                 for k, v in weights.items()}  # fmt: skip
        print(f"  {model_dir.parent.parent.name} {name}: last pick {picks}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a melu cv --out folder")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    parser.add_argument(
        "--rules",
        default=",".join(str(i) for i in range(len(RULES))),
        help="which rules, by number (0 = the default, the yardstick)",
    )
    parser.add_argument("--folds", default="", help="only these folds, e.g. 0,1 (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(RULES)
    rules = {names[int(i)]: RULES[names[int(i)]] for i in args.rules.split(",")}
    pooled: dict[str, dict[int, tuple[list[list[Tensor]], list[float]]]] = {}
    for folder in sorted((args.study / "folds").glob("fold*-seed*")):
        model = folder / "run" / "model"
        fold = folder.name.removeprefix("fold").split("-")[0]
        if not (model / "config.json").exists() or (
            args.folds and fold not in args.folds.split(",")
        ):
            continue
        for name, by_n in fold_rules(model, args.data_dir, rules).items():
            for n, (values, coverage) in by_n.items():
                rows, cov = pooled.setdefault(name, {}).setdefault(n, ([[], [], []], []))
                for row, v in zip(rows, values, strict=True):
                    row.append(v)
                cov.extend(coverage)
    first = next(iter(pooled))
    print("picked on half the validation users, scored on the other half")
    print("(mean, then the paired difference to the first rule, ± 1.96 SE over the users):")
    for index, metric in enumerate(METRICS):
        print(f"{metric}: " + " ".join(f"n={n:<17d}" for n in SCORED))
        for name, by_n in pooled.items():
            cells = []
            for n in SCORED:
                v = torch.cat(by_n[n][0][index])
                d = v - torch.cat(pooled[first][n][0][index])
                keep = ~d.isnan()
                se = float(d[keep].std()) / math.sqrt(max(int(keep.sum()), 1))
                cells.append(f"{float(v.nanmean()):.4f} {float(d.nanmean()):+.4f}±{1.96 * se:.4f}")
            print(f"  {name:44s} " + "  ".join(cells))
    print("catalog coverage of a half's lists: " + " ".join(f"n={n:<6d}" for n in SCORED))
    for name, by_n in pooled.items():
        cov = [sum(by_n[n][1]) / len(by_n[n][1]) for n in SCORED]
        print(f"  {name:44s} " + "  ".join(f"{c:.3f}" for c in cov))


if __name__ == "__main__":
    main()
