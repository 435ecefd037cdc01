"""Is a user-kNN part a signal the head lacks? Priced on validation users only (issue 15).

Every part of the ranking head scores the catalog *linearly* in the support: a sum over the
rated items of what each adds (co-occurrence, EASE^R, the liked target, the RP³β walk). A
user-based neighbourhood is not: the training users who rated *several* of a person's films
weigh far more than those who share one (sim^α), so "who rated The Shining, A Nightmare on
Elm Street and Carrie" speaks for itself. Neighbourhood methods of this kind are among the
strong top-N baselines (Dacrema et al. 2019).

The scores are the library's user-kNN baseline (``melu.evaluation.topn_user_knn``, which
this study came before): sim = x Xᵀ / √|X_v|, w = sim^α with the top k per row, s = w T, T
what the neighbours rated or liked.

For each fold of a finished ``melu cv`` study, the validation users at n = 1, 3, 5, 10 and
20 ratings (3 seeded support draws each) are ranked by the served head, by user-kNN alone
and by a blend z(head) + ω·z(kNN) (z: standardised over each user's candidates), for a grid
of (α, k, T, ω). The grid point is picked honestly: on a random half of each fold's
validation users, then scored on the other half, both ways (as ``pick_rule.py``). Printed
per n: NDCG@10, Recall@10, the share of a top-10 also in the user's no-ratings list, the
catalog coverage of a fold's lists; each the paired difference to the served lists (mean
± 1.96 SE over user draws, pooled over folds). Test users are never looked at.

    python studies/user_knn.py --study runs/cv-ml-100k
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from pathlib import Path

import torch
from pick_rule import candidate_scores, catalog_counts
from torch import Tensor

from melu.bundle import load_bundle
from melu.evaluation.topn import TopNProtocol, TopNUsers, topn_users, user_metrics
from melu.evaluation.topn_model import ModelRanker
from melu.evaluation.topn_user_knn import TARGETS, Neighbours, UserKnnRanker
from melu.prepare import prepare

SIZES = (1, 3, 5, 10, 20)
SEEDS = (0, 1, 2)
ALPHAS = (1.0, 2.0, 3.0, 5.0)
NEIGHBOURS = (25, 100, 0)  # 0: every training user
WEIGHTS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, math.inf)  # inf: user-kNN alone
COLUMNS = ("NDCG@10", "Recall@10", "shared")


def standardised(s: Tensor) -> Tensor:
    """(C, I) each row standardised over its finite entries (−inf stays −inf)."""
    finite = torch.isfinite(s)
    v = torch.where(finite, s, 0.0)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = v.sum(1, keepdim=True) / n
    var = (torch.where(finite, s - mean, 0.0) ** 2).sum(1, keepdim=True) / n
    return torch.where(finite, (s - mean) / var.sqrt().clamp(min=1e-9), -torch.inf)


def fold_table(model_dir: Path, data_dir: str) -> tuple[Tensor, dict[int, dict]]:
    """The fold's validation user ids, and n → variant → per-draw (users, 3) metrics and the
    (users, 10) lists (variant ``served`` or (α, k, target, ω))."""
    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    threshold = TopNProtocol().threshold
    neighbours = Neighbours.from_rows(prepared.train_ratings, len(prepared.tables.item_ids),
                                      threshold)  # fmt: skip
    pop = catalog_counts(ranker).float()
    out: dict[int, dict] = {}
    with torch.no_grad():
        empty = topn_users(prepared, "validation", 0)
        none_lists = candidate_scores(ranker, empty.supports).topk(10, 1).indices
        none_of = dict(zip(empty.user_ids.tolist(), none_lists, strict=True))
        for n in SIZES:
            table: dict = {}
            for seed in SEEDS:
                users = topn_users(prepared, "validation", n, TopNProtocol(seed=seed))
                head = candidate_scores(ranker, users.supports)
                none = torch.stack([none_of[int(u)] for u in users.user_ids])
                lists = {"served": head.topk(10, 1).indices}
                z_head = standardised(head)
                for alpha, k, t in itertools.product(ALPHAS, NEIGHBOURS, TARGETS):
                    s = UserKnnRanker(neighbours, alpha, k, t, pop).scores(users.supports)
                    z = standardised(torch.where(torch.isfinite(head), s, -torch.inf))
                    for w in WEIGHTS:
                        blend = z if math.isinf(w) else z_head + w * z
                        lists[(alpha, k, t, w)] = blend.topk(10, 1).indices
                for key, top in lists.items():
                    table.setdefault(key, []).append(
                        (users, _metrics(top, users, none, threshold), top)
                    )
            out[n] = table
    print(f"  {model_dir}: {len(empty)} validation users", flush=True)
    return empty.user_ids, out


def _metrics(top: Tensor, users: TopNUsers, none: Tensor, threshold: float) -> Tensor:
    m = user_metrics(top, users.relevant(threshold), (10,))
    shared = (top.unsqueeze(2) == none.unsqueeze(1)).any(2).double().mean(1)
    return torch.stack([m["ndcg@10"], m["recall@10"], shared], 1)  # (U, 3)


def honest(ids: Tensor, table: dict, only_alone: bool) -> tuple[Tensor, Tensor, float, list]:
    """Pick a variant on one half of the users by NDCG@10, score it on the other, both
    ways: (U·draws, 3) metrics of the picked variants, the served ones on the same rows, the
    mean coverage of the picked lists, and what each half picked."""
    half = torch.randperm(len(ids), generator=torch.Generator().manual_seed(7)) % 2
    side = dict(zip(ids.tolist(), half.tolist(), strict=True))
    keys = [k for k in table if k != "served" and (math.isinf(k[3]) == only_alone)]
    got, served, covs, served_covs, picks = [], [], [], [], []

    def mean_ndcg(key: tuple, s: int) -> float:
        vals = [m[_on(users, side, s)][:, 0] for users, m, _ in table[key]]
        return float(torch.cat(vals).nanmean())

    for pick_side in (0, 1):
        best = max(keys, key=lambda k: mean_ndcg(k, pick_side))
        picks.append(best)
        for (users, m, top), (_, m0, top0) in zip(table[best], table["served"], strict=True):
            keep = _on(users, side, 1 - pick_side)
            got.append(m[keep])
            served.append(m0[keep])
            covs.append(len(torch.unique(top[keep])))
            served_covs.append(len(torch.unique(top0[keep])))
    return (
        torch.cat(got),
        torch.cat(served),
        (sum(covs) / len(covs), sum(served_covs) / len(covs)),
        picks,
    )


def _on(users: TopNUsers, side: dict[int, int], s: int) -> Tensor:
    """(U,) bool: which of ``users`` are on half ``s``."""
    return torch.tensor([side[int(u)] == s for u in users.user_ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a melu cv --out folder")
    parser.add_argument("--folds", default="", help="comma-separated fold numbers (all)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = [f / "run" / "model" for f in sorted((args.study / "folds").glob("fold*-seed*"))]
    models = [m for m in models if (m / "config.json").exists()]
    if args.folds:
        wanted = {int(f) for f in args.folds.split(",")}
        models = [m for m in models if int(m.parent.parent.name[4:].split("-")[0]) in wanted]
    pooled: dict[int, dict[str, list]] = {}
    for model in models:
        ids, by_n = fold_table(model, args.data_dir)
        for n, table in by_n.items():
            for label, alone in (("user-kNN alone", True), ("head + ω·user-kNN", False)):
                got, served, cov, picks = honest(ids, table, alone)
                entry = pooled.setdefault(n, {}).setdefault(label, [[], [], [], [], []])
                entry[0].append(got)
                entry[1].append(served)
                entry[2].append(cov[0])
                entry[3].append(cov[1])
                entry[4].append(picks)
    print("validation users, 3 draws each; the variant picked on one half, scored on the other "
          "(mean, then the paired difference to the served lists ± 1.96 SE); distinct items in a "
          "half's lists, picked vs served")  # fmt: skip
    for n, by_label in pooled.items():
        served_all = torch.cat(by_label["user-kNN alone"][1])
        base = "  ".join(
            f"{c} {float(served_all[:, i].nanmean()):.4f}" for i, c in enumerate(COLUMNS)
        )
        print(f"n = {n}: served {base}")
        for label, (got, served, cov, served_cov, picks) in by_label.items():
            g, s = torch.cat(got), torch.cat(served)
            cells = []
            for i, c in enumerate(COLUMNS):
                d = g[:, i] - s[:, i]
                keep = ~d.isnan()
                se = float(d[keep].std()) / math.sqrt(max(int(keep.sum()), 1))
                cells.append(
                    f"{c} {float(g[:, i].nanmean()):.4f} {float(d[keep].mean()):+.4f}±{1.96 * se:.4f}"
                )
            print(
                f"  {label:20s} "
                + "  ".join(cells)
                + f"  items {sum(cov) / len(cov):.0f} (served {sum(served_cov) / len(served_cov):.0f})"
            )
            print(f"    picked: {[p for fold in picks for p in fold]}")


if __name__ == "__main__":
    main()
