"""K-fold cross-validation over users: ``run_cv(config, data_dir, out, ...)``.

Each fold is the random user split with ``DataConfig.folds`` / ``fold`` (test users = fold
k, disjoint across folds, every user a test user once; validation users from the other
folds). For each fold and training seed: prepare the fold's tasks, meta-train the model
(``melu.training.train.train``), fit the baselines on the fold's training users and
evaluate (``melu.evaluation.evaluate.evaluate`` with per-user figures). Each (fold, seed)
result is saved atomically to ``out/folds/fold<k>-seed<s>/result/result.json`` as it finishes and
skipped when present (``out/folds/fold<k>-seed<s>/run`` holds the training run), so an interrupted study resumes where it stopped.

Pooling (``pool``): per scenario, each user's per-user MAE is averaged over the seeds
*and* the folds the user appears in (cold-user scenarios: one fold; warm / item-cold: the
user is a training user in several folds), so each user counts once. Pooled MAE of a
method = the mean over users; paired difference model − baseline = the mean over users of
the per-user differences; 95% CIs from one seeded bootstrap over users per scenario,
shared by all methods (paired). The top-N figures (``melu.evaluation.topn_eval``) are
pooled the same way per setting (``pool_topn``): per-user rows of every fold, each user
averaged over the seeds, paired CIs over the pooled users.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melu import __version__
from melu.atomic import atomic_directory, recover
from melu.bundle import load_bundle
from melu.config import Config
from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.evaluate import BASELINES, METHODS, Report, evaluate
from melu.evaluation.metrics import bootstrap_ci, bootstrap_indices
from melu.evaluation.topn import TopNProtocol
from melu.evaluation.topn_baselines import TopNBaselineConfig
from melu.evaluation.topn_eval import pool_topn
from melu.prepare import prepare
from melu.tasks import EVAL_SCENARIOS
from melu.training.train import train

Progress = Callable[[str], None]
MODEL = "maml_after"


@dataclass(frozen=True)
class CVOptions:
    """The study's shape: folds, training seeds, curves and the bootstrap."""

    folds: int = 5
    seeds: tuple[int, ...] = (0,)
    support_sizes: tuple[int, ...] = (1, 3, 5, 10, 20)
    n_boot: int = 1000
    eval_seed: int = 0  # support subsets and pooled-baseline seed, the same in every run
    baselines: BaselineConfig | None = None
    topn_baselines: TopNBaselineConfig | None = None  # their grids (default: the full ones)
    topn: bool = True  # also the full-catalog top-N study, pooled per user over the folds
    only_folds: tuple[int, ...] | None = None  # run and pool just these folds (a part study)


def fold_config(config: Config, fold: int, folds: int, seed: int) -> Config:
    """``config`` on fold ``fold`` of ``folds`` (random user split), training seed ``seed``."""
    data = config.data.replace(user_split="random", folds=folds, fold=fold)
    return config.replace(data=data, train=config.train.replace(seed=seed))


def run_fold(
    config: Config,
    data_dir: Path | str,
    folder: Path,
    options: CVOptions,
    cache_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Prepare, train (in ``folder/run``, resumable), evaluate with per-user figures."""
    prepared = prepare(config.data, data_dir, cache_dir)
    run = folder / "run"
    started = recover(run / "checkpoint").is_dir()  # a fold killed mid-training goes on
    result = train(config, prepared, run, resume=started)
    bundle = load_bundle(result.bundle)
    baselines = options.baselines or BaselineConfig(seed=options.eval_seed)
    report = evaluate(
        bundle, prepared, steps_curve=(0,), support_sizes=options.support_sizes,
        seed=options.eval_seed, n_boot=100, baselines=baselines, keep_per_user=True,
        topn=TopNProtocol(supports=options.support_sizes, seed=options.eval_seed)
        if options.topn else None, topn_baselines=options.topn_baselines,
    )  # fmt: skip
    return {"best_epoch": result.best_epoch, **report.to_dict()}


def run_cv(
    config: Config,
    data_dir: Path | str,
    out: Path | str,
    options: CVOptions,
    *,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Run every (fold, seed) not yet saved under ``out/folds``, then pool them.

    ``progress(message)`` is called once per (fold, seed), run or skipped."""
    say = progress or (lambda _msg: None)
    out = Path(out)
    results = []
    chosen = options.only_folds if options.only_folds is not None else range(options.folds)
    for fold in chosen:
        for seed in options.seeds:
            folder = out / "folds" / f"fold{fold}-seed{seed}"
            path = folder / "result" / "result.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
                say(f"fold {fold} seed {seed}: done before, skipped")
                continue
            cfg = fold_config(config, fold, options.folds, seed)
            result = run_fold(cfg, data_dir, folder, options, cache_dir)
            with atomic_directory(path.parent) as tmp:
                (tmp / path.name).write_text(json.dumps(result) + "\n")
            results.append(result)
            say(f"fold {fold} seed {seed}: trained and evaluated")
    meta = {
        "melu_version": __version__,
        "study": "k-fold over users",
        "dataset": config.data.dataset,
        "folds": options.folds,
        "folds_pooled": list(chosen),
        "seeds": list(options.seeds),
        "n_boot": options.n_boot,
        "config": config.to_dict(),
        "baselines": [r["meta"]["baselines"] for r in results],
        "best_epochs": [r["best_epoch"] for r in results],
        "headline": "mae: per-user query MAE, each user averaged over seeds and folds first",
    }
    report = pool(results, meta, options.n_boot, options.eval_seed)
    if results and all(r.get("topn") for r in results):
        report.topn = pool_topn([r["topn"] for r in results], options.n_boot, options.eval_seed)
        report.topn["settings"] = _run_settings([r["topn"]["settings"] for r in results])
    return report


def _run_settings(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each top-N baseline's settings as picked in the runs, in run order ("; " between
    runs): the chosen values and their validation NDCG@10, not the whole grid."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    return {f"{k} (per run)": "; ".join(_chosen(r.get(k, "-")) for r in runs) for k in keys}


def _chosen(info: Any) -> str:
    """``{"chosen": {...}, "validation_ndcg@10": x, ...}`` → "a=1, b=2 (validation 0.412)"."""
    if not isinstance(info, dict) or "chosen" not in info:
        return str(info)
    picked = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["chosen"].items()
    )
    score = info.get("validation_ndcg@10")
    tail = f" (validation NDCG@10 {score:.3f})" if isinstance(score, float) else ""
    return (picked or "no setting") + tail


def _frame(results: Sequence[dict[str, Any]], name: str, key: str) -> pd.DataFrame:
    """Per-user MAE rows of ``name`` in every result: columns user_id + one per column
    ``key`` gives ("methods": method names; "support_curve": ``<method>@<n>``)."""
    parts = []
    for r in results:
        per = r["scenarios"][name]["per_user"]
        sizes = r["scenarios"][name]["support_curve"]["sizes"]
        cols: dict[str, Any] = {"user_id": per["user_ids"]}
        if key == "methods":
            cols.update(per["methods"])
        else:
            for method, points in per["support_curve"].items():
                cols.update({f"{method}@{n}": p for n, p in zip(sizes, points, strict=True)})
        parts.append(pd.DataFrame(cols))
    return pd.concat(parts).groupby("user_id").mean()  # each user once


def _ci_point(values: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    return {"mae": float(np.nanmean(values)), "mae_ci": list(bootstrap_ci(values, index))}


def pool_scenario(results: Sequence[dict[str, Any]], name: str, n_boot: int, seed: int) -> dict:
    """One scenario's pooled MAE per method, paired differences and support curves."""
    users = _frame(results, name, "methods")
    index = bootstrap_indices(len(users), n_boot, seed)
    methods = {m: _ci_point(users[m].to_numpy(), index) for m in METHODS}
    comparison = {}
    for base in BASELINES:
        diff = (users[MODEL] - users[base]).to_numpy()
        lo, hi = bootstrap_ci(diff, index)
        comparison[base] = {"difference": float(np.nanmean(diff)), "ci": [lo, hi],
                            "maml_better": hi < 0, "maml_worse": lo > 0}  # fmt: skip
    curves = _frame(results, name, "support_curve").loc[users.index]
    sizes = results[0]["scenarios"][name]["support_curve"]["sizes"]
    keys = results[0]["scenarios"][name]["per_user"]["support_curve"]
    support: dict[str, Any] = {"sizes": sizes}
    for key in keys:
        support[key] = [_ci_point(curves[f"{key}@{n}"].to_numpy(), index) for n in sizes]
    best = min(BASELINES, key=lambda b: methods[b]["mae"])
    return {
        "n_users": len(users),
        "n_runs": len(results),
        "methods": methods,
        "comparison": comparison,
        "best_baseline": best,
        "support_curve": support,
    }


def pool(results: Sequence[dict[str, Any]], meta: dict[str, Any], n_boot: int, seed: int) -> Report:
    """The pooled study ``Report`` of per-(fold, seed) ``results`` (see the module doc)."""
    names = [n for n in EVAL_SCENARIOS if all(n in r["scenarios"] for r in results)]
    return Report(meta, {n: pool_scenario(results, n, n_boot, seed) for n in names})
