"""The top-N study of one evaluation: every ranker on every setting of the protocol.

``evaluate_topn(prepared, rankers, protocol)`` runs ``melu.evaluation.topn`` for the
scenarios ``user_cold`` and ``user_item_cold``, supports n ∈ {0} ∪ ``protocol.supports``
(0: the no-ratings list) and candidates ``all`` (the scenario's items minus the support)
and ``seen`` (only items rated in training; none for ``user_item_cold``, whose items are
all new). Per setting and ranker: per-user Recall/NDCG/Precision@k with 95% bootstrap CIs,
the list statistics of the top-``ks[0]`` lists, and per baseline the paired per-user
difference model − baseline (one seeded bootstrap draw per setting, shared by all
rankers). The *best baseline* of a setting is the one with the highest mean ``recall@10``
(``HEADLINE``), picked among all baselines. ``pool_topn`` pools several such results (the
folds × seeds of ``melu cv``) per user. Everything returned is plain JSON-able data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from melu.bundle import Bundle
from melu.evaluation.bias import BiasPredictor
from melu.evaluation.metrics import bootstrap_ci, bootstrap_indices
from melu.evaluation.mf import MatrixFactorization
from melu.evaluation.topn import (
    Candidates,
    Ranker,
    Supports,
    TopNProtocol,
    TopNScenario,
    TopNUsers,
    chunks,
    list_stats,
    rank_users,
    topn_users,
    training_popularity,
    user_metrics,
)
from melu.evaluation.topn_baselines import TopNBaselineConfig, fit_topn_baselines
from melu.evaluation.topn_model import ModelRanker
from melu.prepare import Prepared

Progress = Callable[[str], None]
TOPN_SCENARIOS: tuple[TopNScenario, ...] = ("user_cold", "user_item_cold")
CANDIDATES: tuple[Candidates, ...] = ("all", "seen")
MODEL = "model"
HEADLINE = "recall@10"
LIST_STATS = ("coverage", "popularity", "overlap_no_ratings", "overlap_pairwise")


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "precision")]


class Cached:
    """A ranker's scores of a fixed set of users (U, I), looked up by user row: the
    no-ratings list of each user, computed once per scenario and reused at every n."""

    def __init__(self, scores: Tensor, user_rows: Tensor) -> None:
        self._scores = scores
        self._index = {int(r): i for i, r in enumerate(user_rows.tolist())}

    def scores(self, supports: Supports) -> Tensor:
        rows = [self._index[int(r)] for r in supports.user_rows.tolist()]
        return self._scores[torch.as_tensor(rows, dtype=torch.long)]


def no_ratings_scores(ranker: Ranker, users: TopNUsers, chunk: int = 256) -> Cached:
    """``ranker``'s scores of ``users`` (n = 0: no support), cached by user row."""
    parts = []
    with torch.no_grad():
        for part in chunks(len(users), chunk):
            parts.append(ranker.scores(users.supports.select(part)).float().cpu())
    scores = torch.cat(parts) if parts else torch.zeros(0, len(users.candidates))
    return Cached(scores, users.supports.user_rows)


def summarize_users(
    per_user: Mapping[str, Mapping[str, np.ndarray]], metrics: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """Means with 95% CIs per ranker and metric, paired model − baseline differences and
    the best baseline, from per-user values ``per_user[ranker][metric]`` (U,)."""
    n_users = len(next(iter(next(iter(per_user.values())).values())))
    index = bootstrap_indices(n_users, n_boot, seed)
    methods: dict[str, dict[str, Any]] = {}
    for name, values in per_user.items():
        methods[name] = {}
        for m in metrics:
            methods[name][m] = float(np.nanmean(values[m]))
            methods[name][f"{m}_ci"] = list(bootstrap_ci(values[m], index))
    comparison: dict[str, Any] = {}
    baselines = [b for b in per_user if b != MODEL]
    for base in baselines if MODEL in per_user else ():
        comparison[base] = {}
        for m in metrics:
            diff = per_user[MODEL][m] - per_user[base][m]
            lo, hi = bootstrap_ci(diff, index)
            comparison[base][m] = {"difference": float(np.nanmean(diff)), "ci": [lo, hi],
                                   "model_better": lo > 0, "model_worse": hi < 0}  # fmt: skip
    best = max(baselines, key=lambda b: methods[b][HEADLINE]) if baselines else None
    return {"methods": methods, "comparison": comparison, "best_baseline": best}


def evaluate_setting(
    rankers: Mapping[str, Ranker],
    users: TopNUsers,
    no_ratings: Mapping[str, Cached],
    protocol: TopNProtocol,
    popularity: Tensor,
    *,
    n_boot: int,
    seed: int,
    keep_per_user: bool,
) -> dict[str, Any]:
    """One (scenario, n, candidates) setting: every ranker's figures (see the module doc)."""
    metrics, k_list = metric_names(protocol.ks), protocol.ks[0]
    relevant = users.relevant(protocol.threshold)
    per_user, stats = {}, {}
    for name, ranker in rankers.items():
        top = rank_users(ranker, users, max(protocol.ks))
        per_user[name] = {m: v.numpy() for m, v in user_metrics(top, relevant, protocol.ks).items()}
        top0 = rank_users(no_ratings[name], users, k_list)
        n_candidates = int(users.candidates.sum())
        stats[name] = list_stats(top[:, :k_list], top0, popularity, n_candidates)
    out = summarize_users(per_user, metrics, n_boot, seed)
    for name in rankers:
        out["methods"][name].update(stats[name])
    head = {"n": users.n, "n_users": len(users), "n_candidates": int(users.candidates.sum())}
    if keep_per_user:
        out["per_user"] = {
            "user_ids": users.user_ids.tolist(),
            "methods": {r: {m: v.tolist() for m, v in per_user[r].items()} for r in rankers},
        }
    return {**head, **out}


def evaluate_topn(
    prepared: Prepared,
    rankers: Mapping[str, Ranker],
    protocol: TopNProtocol = TopNProtocol(),
    *,
    scenarios: Sequence[TopNScenario] = TOPN_SCENARIOS,
    candidates: Sequence[Candidates] = CANDIDATES,
    n_boot: int = 1000,
    seed: int = 0,
    keep_per_user: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The top-N figures of ``rankers`` (``MODEL`` is the model, the rest baselines):
    ``{"protocol", "k_lists", "sizes", "rankers", "scenarios": {scenario: {candidates:
    [setting per n]}}}``; a (scenario, candidates) pair without users is left out."""
    say = progress or (lambda _msg: None)
    sizes = sorted({0, *protocol.supports})
    popularity = training_popularity(prepared.train_ratings, len(prepared.tables.item_ids))
    out: dict[str, Any] = {"protocol": asdict(protocol), "k_lists": protocol.ks[0],
                           "sizes": sizes, "rankers": list(rankers), "scenarios": {}}  # fmt: skip
    for scenario in scenarios:
        for cand in candidates:
            base = topn_users(prepared, scenario, 0, protocol, cand)
            if len(base) < 2:
                say(f"top-N {scenario} ({cand} candidates): no users")
                continue
            cached = {name: no_ratings_scores(r, base) for name, r in rankers.items()}
            points = []
            for n in sizes:
                users = base if n == 0 else topn_users(prepared, scenario, n, protocol, cand)
                if len(users) < 2:
                    continue
                points.append(evaluate_setting(
                    rankers, users, cached, protocol, popularity, n_boot=n_boot, seed=seed,
                    keep_per_user=keep_per_user,
                ))  # fmt: skip
            out["scenarios"].setdefault(scenario, {})[cand] = points
            say(f"top-N {scenario} ({cand} candidates)")
    return out


def _pool_setting(points: Sequence[dict[str, Any]], metrics: Sequence[str], n_boot: int,
                  seed: int) -> dict[str, Any]:  # fmt: skip
    """One setting pooled over runs: each user's values averaged over the runs holding
    them (seeds), list statistics averaged over the runs."""
    rankers = list(points[0]["per_user"]["methods"])
    frames = []
    for p in points:
        per = p["per_user"]
        cols = {f"{r}|{m}": per["methods"][r][m] for r in rankers for m in metrics}
        frames.append(pd.DataFrame({"user_id": per["user_ids"], **cols}))
    users = pd.concat(frames).groupby("user_id").mean()
    per_user = {r: {m: users[f"{r}|{m}"].to_numpy() for m in metrics} for r in rankers}
    out = summarize_users(per_user, metrics, n_boot, seed)
    for r in rankers:
        for s in LIST_STATS:
            values = [p["methods"][r][s] for p in points if s in p["methods"][r]]
            if values:
                out["methods"][r][s] = float(np.mean(values))
    head = {"n": points[0]["n"], "n_users": len(users), "n_runs": len(points),
            "n_candidates": int(np.mean([p["n_candidates"] for p in points]))}  # fmt: skip
    return {**head, **out}


def pool_topn(results: Sequence[Mapping[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Pool the ``evaluate_topn(..., keep_per_user=True)`` results of several runs (the
    folds × seeds of a K-fold study): settings present in every run, per user."""
    first = results[0]
    metrics = metric_names(first["protocol"]["ks"])
    out = {k: first[k] for k in ("protocol", "k_lists", "sizes", "rankers")}
    out["scenarios"] = {}
    for scenario, by_cand in first["scenarios"].items():
        for cand, points in by_cand.items():
            pooled = []
            for point in points:
                same = [_find(r, scenario, cand, point["n"]) for r in results]
                if all(s is not None for s in same):
                    pooled.append(_pool_setting(same, metrics, n_boot, seed))  # type: ignore[arg-type]
            out["scenarios"].setdefault(scenario, {})[cand] = pooled
    return out


def _find(result: Mapping[str, Any], scenario: str, cand: str, n: int) -> dict[str, Any] | None:
    points = result["scenarios"].get(scenario, {}).get(cand, [])
    return next((p for p in points if p["n"] == n), None)


def topn_study(
    bundle: Bundle,
    prepared: Prepared,
    protocol: TopNProtocol = TopNProtocol(),
    *,
    scenarios: Sequence[TopNScenario] = TOPN_SCENARIOS,
    n_boot: int = 1000,
    seed: int = 0,
    keep_per_user: bool = False,
    progress: Progress | None = None,
    baselines: TopNBaselineConfig | None = None,
    rating: tuple[BiasPredictor, MatrixFactorization] | None = None,
) -> dict[str, Any]:
    """``evaluate_topn`` of the bundle's model (``ModelRanker``) against every top-N
    baseline (fit on ``prepared.train_ratings``, settings picked on validation users from
    the grids of ``baselines``), with the baselines' settings under ``"settings"``.
    ``rating``: the rating baselines already fit (see ``fit_topn_baselines``)."""
    say = progress or (lambda _msg: None)
    fitted, picked = fit_topn_baselines(prepared, protocol, None, baselines, rating)
    say("top-N baselines fitted")
    rankers: dict[str, Ranker] = {
        MODEL: ModelRanker.from_bundle(bundle, prepared.tables),
        **fitted,
    }
    out = evaluate_topn(
        prepared, rankers, protocol, scenarios=scenarios, n_boot=n_boot, seed=seed,
        keep_per_user=keep_per_user, progress=say,
    )  # fmt: skip
    return {**out, "settings": dict(picked)}
