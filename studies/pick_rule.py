"""Which rule for picking the ranking head's part weights ranks unseen users best?

For each fold of a finished ``melu cv`` study, the fold's validation users are split in two
seeded halves; each rule picks the head's part weights per support-size bucket with the
library's own ``pick_mixing`` on one half (from the head's start: EASE^R alone), and the
picked head ranks the other half's users at n = 0, 1, 3, 5, 10, 20 ratings; then the halves
swap. Rules differ in what the pick sees: how many seeded support draws per user, which
support sizes stand for each bucket (``train.rank_mix_draws``, ``rank_mix_sizes``). Prints per n each rule's NDCG@10 and Recall@10 on the
users it did not pick on, and the paired difference to the first rule (mean ± 1.96 SE over
users). Only validation users are used; test users are never looked at.

    python studies/pick_rule.py --study runs/cv-ml-100k
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from melu.bundle import load_bundle
from melu.evaluation.topn import TopNProtocol, TopNUsers, rank_users, topn_users, user_metrics
from melu.evaluation.topn_model import ModelRanker
from melu.prepare import prepare
from melu.training.rank_mix import MIX_SIZES, PARTS, mix_draws, pick_mixing

SCORED = (0, 1, 3, 5, 10, 20)
# rule name → (support sizes standing for each bucket 0, 1, 2-3, 4-7, 8+; draws per bucket,
# as ``mix_draws`` makes them); the first is the yardstick
RULES: dict[str, tuple[tuple[tuple[int, ...], ...], int]] = {
    "one size per bucket (1/3/5/10), 2 draws": (MIX_SIZES["one"], 2),
    "one size per bucket, 4 draws": (MIX_SIZES["one"], 4),
    "spread (1; 2, 3; 4, 5, 7; 8-20), >= 2 draws": (MIX_SIZES["spread"], 2),
    "spread, >= 4 draws": (MIX_SIZES["spread"], 4),
}


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
    popularity 1e-3 (ties), no predicted rating, no co-occurrence, trained parts at 1."""
    out = {k: params[k].clone() for k in PARTS}
    out["rank.pop_weight"].fill_(1e-3)
    out["rank.rating_weight"].zero_()
    out["rank.cooc_weight"].zero_()
    out["rank.learned_weight"].fill_(1.0)
    return out


def fold_rules(
    model_dir: Path, data_dir: str, rules: dict[str, tuple[tuple[tuple[int, ...], ...], int]]
) -> dict[str, dict[int, list[Tensor]]]:
    """rule → n → [per-user NDCG@10 (U,), Recall@10 (U,)] of the users each rule did not
    pick on (both halves, in user order)."""
    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    ranker.params = {**ranker.params, **start_weights(dict(ranker.params))}
    base = dict(ranker.params)
    threshold = TopNProtocol().threshold
    cache: dict[tuple[int, int], TopNUsers] = {}

    def users(n: int, seed: int) -> TopNUsers:
        if (n, seed) not in cache:
            cache[n, seed] = topn_users(prepared, "validation", n, TopNProtocol(seed=seed))
        return cache[n, seed]

    ids = users(0, 0).user_ids
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    halves = [set(ids[order[: len(ids) // 2]].tolist()), set(ids[order[len(ids) // 2 :]].tolist())]

    def half(u: TopNUsers, h: int) -> TopNUsers:
        return subset(u, torch.tensor([int(i) in halves[h] for i in u.user_ids]))

    out: dict[str, dict[int, list[Tensor]]] = {}
    for name, (sizes, draws) in rules.items():
        got: dict[int, list[list[Tensor]]] = {n: [[], []] for n in SCORED}
        for pick_half in (0, 1):
            mix_users = [
                [half(users(n, seed), pick_half) for n, seed in mix_draws(bucket, draws)]
                for bucket in sizes
            ]
            ranker.params = dict(base)
            choice = pick_mixing(ranker, base, mix_users, threshold)
            ranker.params = {**base, **choice.weights}
            for n in SCORED:
                scored = half(users(n, 0), 1 - pick_half)
                m = user_metrics(rank_users(ranker, scored, 10), scored.relevant(threshold), (10,))
                got[n][0].append(m["ndcg@10"])
                got[n][1].append(m["recall@10"])
        out[name] = {n: [torch.cat(v[0]), torch.cat(v[1])] for n, v in got.items()}
        picks = {k.removeprefix("rank."): [round(x, 3) for x in v.tolist()]
                 for k, v in choice.weights.items() if k in PARTS[:3]}  # fmt: skip
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(RULES)
    rules = {names[int(i)]: RULES[names[int(i)]] for i in args.rules.split(",")}
    pooled: dict[str, dict[int, list[list[Tensor]]]] = {}
    for folder in sorted((args.study / "folds").glob("fold*-seed*")):
        model = folder / "run" / "model"
        if not (model / "config.json").exists():
            continue
        for name, by_n in fold_rules(model, args.data_dir, rules).items():
            for n, (ndcg, recall) in by_n.items():
                slot = pooled.setdefault(name, {}).setdefault(n, [[], []])
                slot[0].append(ndcg)
                slot[1].append(recall)
    first = next(iter(pooled))
    print("picked on half the validation users, scored on the other half:")
    for metric, index in (("NDCG@10", 0), ("Recall@10", 1)):
        print(f"{metric}: " + " ".join(f"n={n:<17d}" for n in SCORED))
        for name, by_n in pooled.items():
            cells = []
            for n in SCORED:
                v = torch.cat(by_n[n][index])
                d = v - torch.cat(pooled[first][n][index])
                keep = ~d.isnan()
                se = float(d[keep].std()) / math.sqrt(max(int(keep.sum()), 1))
                cells.append(f"{float(v.nanmean()):.4f} {float(d.nanmean()):+.4f}±{1.96 * se:.4f}")
            print(f"  {name:42s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
