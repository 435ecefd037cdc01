"""Two more ways to make the list a person sees their own, and what each costs (issue 15).

For each fold of a finished ``melu cv`` study (or one model folder), the fold's validation
users at n = 3, 5 and 10 ratings (3 seeded support draws each) are ranked by the served head
and by two re-rankings of its scores, each on a grid of its strength:

- **genre calibration** (Steck 2018, "Calibrated recommendations"): the top 10 is built
  greedily from the head's top 100, each step taking the item that maximises
  (1 − λ)·z(s_i) − λ·KL(p ‖ q̃), p the genre distribution of the support (the items rated
  ≥ 4, or all if none was), q̃ = 0.99·q + 0.01·p that of the list so far with the item, z the
  score standardised over the user's top 100. A horror fan's list then holds horror films
  in the share their ratings do;
- **popularity by mainstreamness**: s_i + θ·(m_u − m̄)·log(1 + n_i), m_u the mean
  log(1 + n_j) of the support's items and m̄ that of a training rating: users whose support
  is niche get a popularity penalty, mainstream users a bonus.

Prints per n the NDCG@10, Recall@10, the share of a top-10 also in the user's no-ratings list
and the catalog coverage of a fold's lists, each variant's difference to the served lists
(mean ± 1.96 SE over user draws, pooled over folds). Nothing is picked: these are curves of
the price of each step, on validation users only; test users are never looked at.

    python studies/personal_rerank.py --study runs/cv-ml-100k
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from pick_rule import candidate_scores, catalog_counts
from torch import Tensor

from melu.bundle import load_bundle
from melu.evaluation.topn import Supports, TopNProtocol, topn_users, user_metrics
from melu.evaluation.topn_model import ModelRanker
from melu.prepare import prepare

SIZES = (3, 5, 10)
SEEDS = (0, 1, 2)
POOL = 100  # the calibrated list is built from the head's top POOL
ALPHA = 0.01  # q̃ = (1 − α)·q + α·p keeps the divergence finite
LAMBDAS = (0.3, 0.5, 0.7, 0.9)
THETAS = (0.02, 0.05, 0.1, 0.25, 0.5)
METRICS = ("NDCG@10", "Recall@10", "shared with the no-ratings list")


def genre_shares(genres: Tensor) -> Tensor:
    """p(g | i) (I, G): each item's genres (I, L) (index lists, 0 padding) as equal shares."""
    hot = torch.zeros(len(genres), int(genres.max()) + 1).scatter_(1, genres, 1.0)[:, 1:]
    return hot / hot.sum(1, keepdim=True).clamp(min=1.0)


def calibrated(scores: Tensor, supports: Supports, shares: Tensor, lam: float) -> Tensor:
    """(U, 10) Steck's greedy calibrated top 10 from each user's top ``POOL`` of ``scores``
    (U, I) (support items at −inf), genre shares ``shares`` (I, G)."""
    liked = (supports.ratings >= 4.0) & supports.mask
    weight = torch.where(liked.any(1, keepdim=True), liked, supports.mask).float()  # (U, n)
    p = (weight.unsqueeze(-1) * shares[supports.items]).sum(1)
    p = p / weight.sum(1, keepdim=True).clamp(min=1.0)  # (U, G)
    value, top = scores.topk(POOL, dim=1)
    z = (value - value.mean(1, keepdim=True)) / value.std(1, keepdim=True).clamp(min=1e-6)
    cand = shares[top]  # (U, P, G)
    total = torch.zeros_like(p)
    taken = torch.zeros_like(z, dtype=torch.bool)
    rows = torch.arange(len(z))
    log_p = torch.log(p.clamp(min=1e-12)).unsqueeze(1)
    out = []
    for step in range(1, 11):
        q = (1 - ALPHA) * (total.unsqueeze(1) + cand) / step + ALPHA * p.unsqueeze(1)
        kl = (p.unsqueeze(1) * (log_p - torch.log(q.clamp(min=1e-12)))).sum(-1)  # (U, P)
        pick = ((1 - lam) * z - lam * kl).masked_fill(taken, -torch.inf).argmax(1)
        taken[rows, pick] = True
        total = total + cand[rows, pick]
        out.append(top[rows, pick])
    return torch.stack(out, 1)


def variant_lists(
    scores: Tensor, supports: Supports, shares: Tensor, log_pop: Tensor, mean_log_pop: float
) -> dict[str, Tensor]:
    """Variant name → (U, 10) top-10 of each user from the head's ``scores`` (U, I)."""
    m_u = log_pop[supports.items].mean(1, keepdim=True)  # (U, 1) the support's mainstreamness
    out = {"served": scores.topk(10, 1).indices}
    for lam in LAMBDAS:
        out[f"genre calibration λ = {lam}"] = calibrated(scores, supports, shares, lam)
    for th in THETAS:
        moved = scores + th * (m_u - mean_log_pop) * log_pop
        out[f"popularity by mainstreamness θ = {th}"] = moved.topk(10, 1).indices
    return out


def fold_variants(model_dir: Path, data_dir: str) -> dict[int, dict[str, tuple[list, float]]]:
    """n → variant → ([per-user NDCG@10, Recall@10, shared] over the draws, mean coverage)."""
    bundle = load_bundle(model_dir)
    prepared = prepare(bundle.config.data, data_dir)
    ranker = ModelRanker.from_bundle(bundle, prepared.tables)
    shares = genre_shares(prepared.tables.items["genres"])
    counts = catalog_counts(ranker).float()  # (I,)
    log_pop = torch.log1p(counts)
    mean_log_pop = float((log_pop * counts).sum() / counts.sum())  # m̄ of a training rating
    threshold = TopNProtocol().threshold
    out: dict[int, dict[str, tuple[list, float]]] = {}
    with torch.no_grad():
        empty_users = topn_users(prepared, "validation", 0)
        none_scores = candidate_scores(ranker, empty_users.supports)
        none_of = dict(zip(empty_users.user_ids.tolist(), none_scores.topk(10, 1).indices,
                           strict=True))  # fmt: skip
        for n in SIZES:
            got: dict[str, tuple[list, list]] = {}
            for seed in SEEDS:
                users = topn_users(prepared, "validation", n, TopNProtocol(seed=seed))
                s = candidate_scores(ranker, users.supports)
                none = torch.stack([none_of[int(u)] for u in users.user_ids])
                lists = variant_lists(s, users.supports, shares, log_pop, mean_log_pop)
                for name, top in lists.items():
                    m = user_metrics(top, users.relevant(threshold), (10,))
                    shared = (top.unsqueeze(2) == none.unsqueeze(1)).any(2).double().mean(1)
                    values, cov = got.setdefault(name, ([[], [], []], []))
                    for row, v in zip(values, (m["ndcg@10"], m["recall@10"], shared), strict=True):
                        row.append(v)
                    cov.append(len(torch.unique(top)) / int(users.candidates.sum()))
            out[n] = {k: ([torch.cat(r) for r in v], sum(c) / len(c)) for k, (v, c) in got.items()}
    print(f"  {model_dir}: {len(empty_users)} validation users", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, help="a melu cv --out folder (every fold)")
    parser.add_argument("--model", type=Path, help="or one model folder (runs/quickstart/model)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    if (args.study is None) == (args.model is None):
        parser.error("give exactly one of --study and --model")
    torch.set_num_threads(1)
    if args.model is not None:
        models = [args.model]
    else:
        models = [f / "run" / "model" for f in sorted((args.study / "folds").glob("fold*-seed*"))]
        models = [m for m in models if (m / "config.json").exists()]
    pooled: dict[int, dict[str, tuple[list[list[Tensor]], list[float]]]] = {}
    for model in models:
        for n, by_variant in fold_variants(model, args.data_dir).items():
            for name, (values, cov) in by_variant.items():
                rows, covs = pooled.setdefault(n, {}).setdefault(name, ([[], [], []], []))
                for row, v in zip(rows, values, strict=True):
                    row.append(v)
                covs.append(cov)
    print("validation users, 3 draws each (mean, then the paired difference to the served "
          "lists, ± 1.96 SE over user draws; coverage: mean over folds):")  # fmt: skip
    for n, by_variant in pooled.items():
        print(f"n = {n}: " + " | ".join(METRICS) + " | coverage")
        served = by_variant["served"][0]
        for name, (rows, covs) in by_variant.items():
            cells = []
            for index in range(len(METRICS)):
                v, d = torch.cat(rows[index]), torch.cat(rows[index]) - torch.cat(served[index])
                keep = ~d.isnan()
                se = float(d[keep].std()) / math.sqrt(max(int(keep.sum()), 1))
                cells.append(f"{float(v.nanmean()):.4f} {float(d.nanmean()):+.4f}±{1.96 * se:.4f}")
            print(f"  {name:40s} " + "  ".join(cells) + f"  {sum(covs) / len(covs):.3f}")


if __name__ == "__main__":
    main()
