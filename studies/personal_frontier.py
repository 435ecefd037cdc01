"""How personal can the served list be, and what does it cost? (RESULTS.md, issue 15)

For each fold of a finished ``melu cv`` study, the validation users' top-10 at ``--n``
ratings under every mix of the ranking head's part weights on a grid (popularity — here
also *negative*, a penalty —, the adapted predicted rating, co-occurrence; EASE^R's weight
fixed as the scale), scored by NDCG@10 and Recall@10 and by how personal the lists are:
the mean share of a user's list also in their no-ratings list, and the catalog coverage of
all lists together. Prints, per fold and pooled, the best NDCG@10 reachable under each cap
on the shared share. Only validation users are scored; test users are never looked at.

    python studies/personal_frontier.py --study runs/cv-ml-100k --n 5
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import torch
from torch import Tensor

from melu.bundle import load_bundle
from melu.evaluation.topn import TopNProtocol, rank_users, topn_users, user_metrics
from melu.evaluation.topn_model import ModelRanker
from melu.model import ranking
from melu.prepare import prepare
from melu.training.rank_judge import PARTS, part_scores

POP = (-3.0, -2.0, -1.5, -1.0, -0.7, -0.5, -0.4, -0.3, -0.2, -0.1, -0.03, 0.0, 0.03, 0.1, 0.3)
RATING = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
COOC = (0.0, 0.1, 0.3, 1.0, 3.0)
CAPS = (1.0, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)


def bucket(n: int) -> int:
    return sum(1 for edge in ranking.SUPPORT_BUCKETS if n >= edge) - 1


def fold_grid(model_dir: Path, data_dir: str, n: int, seeds: int) -> list[dict]:
    """Per mix on the grid: per-user NDCG@10, Recall@10, shared share (U,) and the lists
    (U, 10) of the fold's validation users at ``n`` ratings (``seeds`` support draws)."""
    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    b = bucket(n)
    fixed = {k: float(ranker.params[k][b]) for k in PARTS[3:]}
    empty = topn_users(prepared, "validation", 0)
    base = rank_users(ranker, empty, 10)
    where = {int(u): i for i, u in enumerate(empty.user_ids)}
    per_seed = []
    for seed in range(seeds):
        users = topn_users(prepared, "validation", n, TopNProtocol(seed=seed))
        baseline_top = base[torch.tensor([where[int(u)] for u in users.user_ids])]
        parts, allowed = part_scores(ranker, ranker.params, users)
        per_seed.append((users, baseline_top, parts, allowed))
    out = []
    for pop, rate, cooc in itertools.product(POP, RATING, COOC):
        w = torch.tensor([1.0, pop, rate, cooc, *fixed.values()]).view(-1, 1, 1)
        rows: dict[str, list[Tensor]] = {"ndcg": [], "recall": [], "shared": [], "top": []}
        for users, baseline_top, parts, allowed in per_seed:
            scores = (w * parts).sum(0).masked_fill(~allowed, -torch.inf)
            top = scores.topk(10, dim=1).indices
            m = user_metrics(top, users.relevant(TopNProtocol().threshold), (10,))
            rows["ndcg"].append(m["ndcg@10"])
            rows["recall"].append(m["recall@10"])
            rows["shared"].append(
                (top.unsqueeze(2) == baseline_top.unsqueeze(1)).any(2).double().mean(1)
            )
            rows["top"].append(top)
        out.append({"w": (pop, rate, cooc), **{k: torch.cat(v) for k, v in rows.items()}})
    served = tuple(float(ranker.params[k][b]) for k in PARTS[:3])
    print(
        f"{model_dir.parent.parent.name}: {len(per_seed[0][0])} users x {seeds} draws, "
        f"served (pop, rating, cooc) {served}, fixed {fixed}",
        flush=True,
    )
    for r in out:
        r["served"] = r["w"] == served
        r["ease"] = r["w"] == (0.0, 0.0, 0.0)
    return out


def summary(rows: list[dict], index: Tensor, n_items: int) -> dict[str, float]:
    return {
        "ndcg": float(rows["ndcg"][index].nanmean()),
        "recall": float(rows["recall"][index].nanmean()),
        "shared": float(rows["shared"][index].mean()),
        "coverage": len(torch.unique(rows["top"][index])) / n_items,
    }


def held_out_check(rows: list[dict], n_items: int, caps: tuple[float, ...]) -> dict[str, list]:
    """Pick on one half of the users, score on the other (both ways): how a selection rule
    does on validation users it was not picked on."""
    users = len(rows[0]["ndcg"])
    halves = torch.randperm(users, generator=torch.Generator().manual_seed(0)).chunk(2)
    out: dict[str, list] = {}
    for pick, score in ((halves[0], halves[1]), (halves[1], halves[0])):
        fixed = {
            "served": next(r for r in rows if r["served"]),
            "ease alone": next(r for r in rows if r["ease"]),
        }
        for cap in caps:
            fit = [r for r in rows if float(r["shared"][pick].mean()) <= cap]
            if fit:
                fixed[f"grid, shared <= {cap:.2f}"] = max(
                    fit, key=lambda r: float(r["ndcg"][pick].nanmean())
                )
        for name, r in fixed.items():
            out.setdefault(name, []).append({**summary(r, score, n_items), "w": r["w"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a melu cv --out folder")
    parser.add_argument("--n", type=int, default=5, help="support size")
    parser.add_argument("--seeds", type=int, default=1, help="support draws per user")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pooled: dict[str, list] = {}
    for folder in sorted((args.study / "folds").glob("fold*-seed*")):
        model = folder / "run" / "model"
        if not (model / "config.json").exists():
            continue
        rows = fold_grid(model, args.data_dir, args.n, args.seeds)
        for name, got in held_out_check(rows, 1682, CAPS).items():
            pooled.setdefault(name, []).extend(got)
    print(f"picked on half the validation users, scored on the other half (n = {args.n}):")
    for name, got in pooled.items():
        mean = {
            k: sum(g[k] for g in got) / len(got) for k in ("ndcg", "recall", "shared", "coverage")
        }
        picks = sorted({g["w"] for g in got})
        print(
            f"  {name:24s} NDCG@10 {mean['ndcg']:.4f} Recall@10 {mean['recall']:.4f} "
            f"shared {mean['shared']:.3f} coverage {mean['coverage']:.3f}  picks {picks[:6]}"
        )


if __name__ == "__main__":
    main()
