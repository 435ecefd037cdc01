"""Scenario evaluation: MAML before/after adaptation, curves, baselines, paired comparison.

``evaluate(bundle, prepared)`` scores the bundle on the four cold-start scenarios of the
data protocol it was trained with and returns a ``Report`` (plain JSON-able figures);
``melu.evaluation.report`` writes it as report.json, report.md and PNG plots. Every per-user interval
uses one seeded bootstrap draw per scenario, shared by all methods, so differences are
paired.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from melu import __version__
from melu.bundle import Bundle
from melu.errors import BundleError, DataError
from melu.evaluation.baselines import (
    BaselineConfig,
    pooled_predict,
)
from melu.evaluation.fitted import Fitted, fit_baselines
from melu.evaluation.metrics import (
    NDCG_KS,
    bootstrap_ci,
    bootstrap_indices,
    nanmean,
    per_user,
    summarize,
)
from melu.evaluation.support import SUPPORT_BASELINES, per_user_mae, support_predictions
from melu.evaluation.topn import TopNProtocol, TopNScenario
from melu.evaluation.topn_baselines import TopNBaselineConfig
from melu.evaluation.topn_eval import CANDIDATES, TOPN_SCENARIOS, topn_study
from melu.model.maml import inner_rates
from melu.model.predict import predict_queries
from melu.prepare import Prepared
from melu.tasks import EVAL_SCENARIOS, TaskSet

Progress = Callable[[str], None]
BASELINES = ("global_mean", "item_mean", "baseline_predictor", "mf", "pooled", "pooled_finetune")
METHODS = ("maml_before", "maml_after", *BASELINES)
CURVE_METRICS = ("mae", "ndcg@10")
HEADLINE = "mae"


@dataclass
class Report:
    """All figures of one evaluation. ``scenarios[name]`` holds ``methods`` (method →
    summary), ``steps_curve``, ``support_curve``, ``comparison`` and task counts; ``topn``
    the full-catalog top-N figures (``melu.evaluation.topn_eval``), when evaluated."""

    meta: dict[str, Any]
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    topn: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"meta": self.meta, "scenarios": self.scenarios}
        return out if self.topn is None else {**out, "topn": self.topn}

    @classmethod
    def load(cls, path: Path | str) -> Report:
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            data = json.loads(path.read_text())
            return cls(data["meta"], data["scenarios"], data.get("topn"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a melu evaluation report ({exc})") from exc


def check_compatible(bundle: Bundle, prepared: Prepared) -> None:
    """Refuse data other than the bundle's: protocol, data files or vocabularies differ."""
    where = bundle.path or "model bundle"
    ours, theirs = bundle.config.data.to_dict(), prepared.config.to_dict()
    diff = {k: (ours[k], theirs.get(k)) for k in ours if ours[k] != theirs.get(k)}
    if diff:
        detail = ", ".join(f"{k}: model {a!r} vs data {b!r}" for k, (a, b) in diff.items())
        raise BundleError(f"{where}: trained with another data protocol ({detail})")
    fingerprint = bundle.info.get("data_fingerprint", "")
    if fingerprint and prepared.fingerprint and fingerprint != prepared.fingerprint:
        raise BundleError(
            f"{where}: trained on other {prepared.config.dataset} files (fingerprint "
            f"{fingerprint[:12]} vs {prepared.fingerprint[:12]} of the data given)"
        )
    if bundle.features.to_dict() != prepared.features.to_dict():
        raise BundleError(f"{where}: feature vocabularies differ from the data's")


def check_tasks(prepared: Prepared, names: Iterable[str]) -> None:
    for name in names:
        if len(prepared.tasks[name]) == 0:
            c = prepared.config
            raise DataError(
                f"scenario {name!r} has no tasks: no user has {c.min_ratings}..{c.max_ratings}"
                f" ratings in its items ({c.dataset})"
            )


def _curve(preds: Tensor, tasks: TaskSet) -> dict[str, list[float]]:
    """Per-metric user-averaged figures of each prediction in ``preds`` (P, T, Q)."""
    out: dict[str, list[float]] = {m: [] for m in CURVE_METRICS}
    for pred in preds:
        values = per_user(pred, tasks.query_ratings, tasks.query_mask, (10,))
        for m in CURVE_METRICS:
            out[m].append(nanmean(values[m]))
    return out


def compare(
    tasks: TaskSet, preds: Mapping[str, Tensor], index: np.ndarray, methods: Mapping[str, Any]
) -> dict[str, Any]:
    """MAML (after) minus the best baseline by headline MAE, per user, with a paired CI."""
    best = min(BASELINES, key=lambda b: methods[b][HEADLINE])
    ours = per_user(preds["maml_after"], tasks.query_ratings, tasks.query_mask)
    theirs = per_user(preds[best], tasks.query_ratings, tasks.query_mask)
    out: dict[str, Any] = {"baseline": best}
    for metric in ("mae", "ndcg@10"):
        diff = ours[metric] - theirs[metric]
        lo, hi = bootstrap_ci(diff, index)
        lower_is_better = metric == "mae"
        out[metric] = {
            "difference": nanmean(diff),
            "ci": [lo, hi],
            "maml_better": (hi < 0) if lower_is_better else (lo > 0),
            "maml_worse": (lo > 0) if lower_is_better else (hi < 0),
        }
    return out


def _support_curve(
    curves: Mapping[str, Sequence[Tensor]],
    tasks: TaskSet,
    index: np.ndarray,
    support_sizes: Sequence[int],
) -> dict[str, list[Any]]:
    """Figures of each method's fixed-support predictions (one per support size)."""
    support: dict[str, list[Any]] = {"sizes": list(support_sizes)}
    for key, points in curves.items():
        support[key] = []
        for pred in points:
            figures = summarize(pred, tasks.query_ratings, tasks.query_mask, index, (10,))
            support[key].append({m: figures[m] for m in ("mae", "mae_ci", "ndcg@10")})
    return support


def evaluate_scenario(
    bundle: Bundle,
    prepared: Prepared,
    fitted: Fitted,
    name: str,
    *,
    steps_curve: Sequence[int],
    support_sizes: Sequence[int],
    seed: int,
    n_boot: int,
    progress: Progress,
    keep_per_user: bool = False,
) -> dict[str, Any]:
    """One scenario's figures (see ``Report``); ``keep_per_user`` adds ``per_user``."""
    tasks, tables = prepared.tasks[name], prepared.tables
    meta = bundle.config.meta
    lr = inner_rates(meta, bundle.inner_lr)
    steps = sorted({0, meta.inner_steps, *steps_curve})
    maml = predict_queries(bundle.model, bundle.params, tasks, tables, steps=steps, lr=lr)
    tuned = predict_queries(
        fitted.pooled_model, fitted.pooled_params, tasks, tables, steps=steps,
        lr=fitted.finetune_lr,
    )  # fmt: skip
    progress(f"{name}: adapted")
    after = steps.index(meta.inner_steps)
    preds = {
        "maml_before": maml[0],
        "maml_after": maml[after],
        "global_mean": torch.full(tasks.query_ratings.shape, fitted.mu),
        "item_mean": fitted.item_mean.predict(tasks.query_items),
        "pooled": pooled_predict(fitted.pooled_model, fitted.pooled_params, tasks, tables),
        "pooled_finetune": tuned[after],
        **{m: fitted.support_predict(m, tasks) for m in SUPPORT_BASELINES},
    }
    index = bootstrap_indices(len(tasks), n_boot, seed)
    methods = {
        m: summarize(p, tasks.query_ratings, tasks.query_mask, index, NDCG_KS)
        for m, p in preds.items()
    }
    curves = support_predictions(bundle, fitted, tasks, tables, support_sizes, seed, lr)
    support = _support_curve(curves, tasks, index, support_sizes)
    progress(f"{name}: support curves")
    sizes = tasks.support_sizes().float()
    return {
        "n_tasks": len(tasks),
        "n_query_ratings": int(tasks.query_mask.sum()),
        "mean_support": float(sizes.mean()),
        "methods": methods,
        "steps_curve": {
            "steps": steps,
            "maml": _curve(maml, tasks),
            "pooled_finetune": _curve(tuned, tasks),
        },
        "support_curve": support,
        "comparison": compare(tasks, preds, index, methods),
        **({"per_user": per_user_mae(tasks, preds, curves)} if keep_per_user else {}),
    }


def count_stages(scenarios: Sequence[str], support_sizes: Sequence[int], topn: bool = False) -> int:
    """How many times ``evaluate`` calls ``progress`` (for a progress bar's total);
    ``support_sizes`` is kept for callers (the curves report once per scenario)."""
    ranked = len(topn_scenarios(scenarios)) if topn else 0
    return 1 + len(scenarios) * 2 + (1 + ranked * len(CANDIDATES) if ranked else 0)


def topn_scenarios(scenarios: Sequence[str]) -> list[TopNScenario]:
    """The top-N scenarios among the evaluated ones (top-N ranks test users only)."""
    return [s for s in TOPN_SCENARIOS if s in scenarios]


def _report_meta(
    bundle: Bundle, prepared: Prepared, fitted: Fitted, seed: int, n_boot: int
) -> dict[str, Any]:
    """``Report.meta``: versions, the bundle's config, the adaptation and baseline settings."""
    meta_cfg = bundle.config.meta
    return {
        "melu_version": __version__,
        "model": str(bundle.path) if bundle.path else None,
        "dataset": prepared.config.dataset,
        "data_fingerprint": prepared.fingerprint,
        "config": bundle.config.to_dict(),
        "seed": seed,
        "n_boot": n_boot,
        "headline": "mae: per-user mean absolute error on the query ratings",
        "adaptation": {
            "steps": meta_cfg.inner_steps,
            "lr": "learned (Meta-SGD)" if bundle.inner_lr is not None else meta_cfg.inner_lr,
            "fast_params": bundle.config.model.fast_params,
            "first_order": True,  # evaluation adapts without a meta-gradient
            "trained_first_order": meta_cfg.first_order,  # the meta-training's order
        },
        "baselines": {
            "global_mean": fitted.mu,
            "item_mean_shrinkage": fitted.item_mean.shrinkage,
            "pooled_best_epoch": fitted.pooled_epoch,
            "finetune_lr": fitted.finetune_lr,
            "finetune_steps": meta_cfg.inner_steps,
            "bias_item_shrinkage": fitted.bias.item_shrinkage,
            "bias_user_shrinkage": fitted.bias.user_shrinkage,
            "mf_rank": fitted.mf.rank,
            "mf_reg": fitted.mf.reg,
            "mf_bias_reg": fitted.mf.bias_reg,
            "rating_baselines_fit_on": f"{len(prepared.train_ratings)} training ratings",
        },
    }


def evaluate(
    bundle: Bundle,
    prepared: Prepared,
    *,
    steps_curve: Iterable[int] = range(0, 11),
    support_sizes: Sequence[int] = (1, 3, 5, 10, 20),
    seed: int = 0,
    n_boot: int = 1000,
    scenarios: Sequence[str] = EVAL_SCENARIOS,
    baselines: BaselineConfig | None = None,
    progress: Progress | None = None,
    keep_per_user: bool = False,
    topn: TopNProtocol | None = TopNProtocol(),
    topn_baselines: TopNBaselineConfig | None = None,
) -> Report:
    """Evaluate ``bundle`` on ``prepared`` (which must be the bundle's data protocol).

    ``keep_per_user``: each scenario also holds ``per_user`` (see ``per_user_mae``), and
    the top-N settings theirs. ``topn``: the top-N protocol (``None``: no top-N figures).
    ``topn_baselines``: the top-N baselines' grids (default ``TopNBaselineConfig()``); the
    rating baselines they rank by (μ + b_i + b_u, MF) are the ones fit for the rating
    tables, under ``baselines``, whatever its ``rating`` says."""
    say = progress or (lambda _msg: None)
    check_compatible(bundle, prepared)
    check_tasks(prepared, ("train", "validation", *scenarios))
    options = baselines or BaselineConfig(seed=seed)
    torch.manual_seed(seed)
    fitted = fit_baselines(bundle, prepared, options, say)
    report = Report(meta=_report_meta(bundle, prepared, fitted, seed, n_boot))
    steps = list(steps_curve)
    for name in scenarios:
        report.scenarios[name] = evaluate_scenario(
            bundle, prepared, fitted, name, steps_curve=steps, support_sizes=support_sizes,
            seed=seed, n_boot=n_boot, progress=say, keep_per_user=keep_per_user,
        )  # fmt: skip
    if topn is not None and topn_scenarios(scenarios):
        grids = dataclasses.replace(topn_baselines or TopNBaselineConfig(), rating=options)
        report.topn = topn_study(
            bundle, prepared, topn, scenarios=topn_scenarios(scenarios), n_boot=n_boot,
            seed=seed, keep_per_user=keep_per_user, progress=say, baselines=grids,
            rating=(fitted.bias, fitted.mf),
        )  # fmt: skip
    return report
