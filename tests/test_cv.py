"""The K-fold study: pooling by hand, and ``melu cv`` end to end with resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_fixtures import TINY_CV_FLAGS, tiny_cv_study

import melu.evaluation.cv as cv
from melu.cli import run_app
from melu.evaluation.cv_report import (
    diff_frame,
    plot_diffs,
    plot_support_curves,
    pooled_frame,
    support_frame,
)
from melu.evaluation.evaluate import BASELINES, METHODS, Report
from melu.evaluation.report import LABELS, figure_png


def fake_result(users: list[int], maml: list[float], base: list[float]) -> dict[str, Any]:
    """A per-(fold, seed) result with one scenario and per-user MAEs."""
    methods = {m: base for m in METHODS} | {"maml_after": maml}
    curve = {k: [maml] for k in ("maml", "mf")}
    scenario = {
        "support_curve": {"sizes": [3]},
        "per_user": {"user_ids": users, "methods": methods, "support_curve": curve},
    }
    return {"scenarios": {"warm": scenario}}


def test_pool_counts_each_user_once_and_pairs_the_differences() -> None:
    results = [  # user 2 appears in two runs (two seeds or two folds as a training user)
        fake_result([1, 2], [1.0, 0.5], [0.8, 0.9]),
        fake_result([2, 3], [0.7, 0.6], [0.5, 0.6]),
    ]
    report = cv.pool(results, {}, n_boot=200, seed=0)
    sc = report.scenarios["warm"]
    assert sc["n_users"] == 3 and sc["n_runs"] == 2
    per_user_maml = np.array([1.0, (0.5 + 0.7) / 2, 0.6])
    per_user_base = np.array([0.8, (0.9 + 0.5) / 2, 0.6])
    assert sc["methods"]["maml_after"]["mae"] == pytest.approx(per_user_maml.mean())
    diff = sc["comparison"]["mf"]
    assert diff["difference"] == pytest.approx((per_user_maml - per_user_base).mean())
    assert diff["ci"][0] <= diff["difference"] <= diff["ci"][1]
    assert sc["support_curve"]["mf"][0]["mae"] == pytest.approx(per_user_maml.mean())


def tiny_pooled_report() -> Report:
    """A hand-built pooled report: two scenarios s = 0, 1, sizes 1 and 3; method i has MAE 0.7 + i/100 + s,
    the curve of method key j at size n is 1 + j/10 − n/100."""
    scenarios = {}
    for s, name in enumerate(("warm", "user_cold")):
        methods = {
            m: {"mae": 0.7 + i / 100 + s, "mae_ci": [0.6, 0.9]} for i, m in enumerate(METHODS)
        }
        comparison = {b: {"difference": -0.1 + i / 100, "ci": [-0.2 + i / 100, i / 100 - 0.05],
                          "maml_better": i < 5, "maml_worse": False}
                      for i, b in enumerate(BASELINES)}  # fmt: skip
        curve: dict[str, Any] = {"sizes": [1, 3]}
        for j, key in enumerate(("maml", "pooled_finetune", "baseline_predictor", "mf")):
            curve[key] = [{"mae": 1 + j / 10 - n / 100, "mae_ci": [0.5, 1.5]} for n in (1, 3)]
        scenarios[name] = {"n_users": 10 + s, "n_runs": 2, "methods": methods,
                           "comparison": comparison, "best_baseline": "mf",
                           "support_curve": curve}  # fmt: skip
    meta = {"dataset": "ml-100k", "folds": 2, "seeds": [0], "n_boot": 10, "best_epochs": [1, 1]}
    return Report(meta, scenarios)


def test_pooled_frame_has_every_method_per_scenario() -> None:
    frame = pooled_frame(tiny_pooled_report())
    assert list(frame.index) == ["warm", "user_cold"]
    assert list(frame.columns) == ["users", "runs", *(LABELS[m] for m in METHODS), "best baseline"]
    assert frame.loc["user_cold", "users"] == 11
    assert frame.loc["warm", LABELS["mf"]] == pytest.approx(0.7 + METHODS.index("mf") / 100)
    assert frame.loc["warm", "best baseline"] == "MF + fold-in"


def test_diff_frame_has_every_baseline_with_its_ci() -> None:
    frame = diff_frame(tiny_pooled_report())
    assert len(frame) == 2 * len(BASELINES)
    row = frame.loc[("warm", "MF + fold-in")]
    i = BASELINES.index("mf")
    assert row["MAML − baseline"] == pytest.approx(-0.1 + i / 100)
    assert (row["CI low"], row["CI high"]) == pytest.approx((-0.2 + i / 100, i / 100 - 0.05))
    assert row["verdict"] == "MAML better"
    assert frame.loc[("warm", "pooled + fine-tune"), "verdict"] == "tie"


def test_support_frame_has_the_model_and_every_baseline_at_each_size() -> None:
    report = tiny_pooled_report()
    frame = support_frame(report)
    assert list(frame.columns) == [1, 3]
    methods = list(frame.loc["warm"].index)
    assert methods == ["MAML, adapted", "pooled + fine-tune", "μ + b_i + b_u", "MF + fold-in",
                       "global mean", "item mean (shrunk)", "pooled"]  # fmt: skip
    assert list(frame.loc[("warm", "μ + b_i + b_u")]) == pytest.approx([1.19, 1.17])
    flat = report.scenarios["user_cold"]["methods"]["item_mean"]["mae"]
    assert list(frame.loc[("user_cold", "item mean (shrunk)")]) == pytest.approx([flat, flat])


def test_cv_plots_draw_every_curve_and_baseline() -> None:
    report = tiny_pooled_report()
    fig = plot_support_curves(report)
    assert [ax.get_title() for ax in fig.axes] == ["warm (10 users)", "user_cold (11 users)"]
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == list(support_frame(report).loc["warm"].index)
    diffs = plot_diffs(report)
    assert len(diffs.axes[0].patches) == 2 * len(BASELINES)
    assert figure_png(fig)[:4] == b"\x89PNG" and figure_png(diffs)[:4] == b"\x89PNG"


def test_cli_cv_writes_the_report_and_resumes_without_retraining(
    data_dir: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = tiny_cv_study(data_dir, tmp_path_factory)  # `melu cv`, shared with the notebook
    report = json.loads((study / "report" / "report.json").read_text())
    for name in ("report.md", "methods.png", "diffs.png", "support_curve.png"):
        assert (study / "report" / name).stat().st_size > 0
    assert report["meta"]["folds"] == 2 and len(report["meta"]["baselines"]) == 2
    cold = report["scenarios"]["user_cold"]
    assert set(cold["methods"]) == set(METHODS)
    assert {"baseline_predictor", "mf", "maml"} <= set(cold["support_curve"])
    results = [json.loads(p.read_text()) for p in sorted(study.glob("folds/*/result/result.json"))]
    tested = [set(r["scenarios"]["user_cold"]["per_user"]["user_ids"]) for r in results]
    assert len(tested) == 2 and not tested[0] & tested[1]
    assert cold["n_users"] == len(tested[0]) + len(tested[1])
    # top-N: per fold per user, pooled over the folds (disjoint test users), paired CIs
    points = report["topn"]["scenarios"]["user_cold"]["all"]
    for point in points:
        fold_users = [
            set(next(p for p in r["topn"]["scenarios"]["user_cold"]["all"] if p["n"] == point["n"])
                ["per_user"]["user_ids"]) for r in results
        ]  # fmt: skip
        assert not fold_users[0] & fold_users[1]
        assert point["n_users"] == len(fold_users[0] | fold_users[1]) and point["n_runs"] == 2
        assert set(point["comparison"]) == set(report["topn"]["rankers"]) - {"model"}
    text = (study / "report" / "report.md").read_text()
    assert text.split("\n")[2].startswith("**Verdict.**") and "```" not in text
    assert "## Full-catalog top-N for new users" in text and "| Recall@10 | n = 0 |" in text
    assert (study / "report" / "topn.png").stat().st_size > 0

    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(cv, "train", no_training)
    out = Path(shutil.copytree(study, tmp_path / "cv"))  # the shared study stays as it was
    args = ["cv", *TINY_CV_FLAGS, "--out", str(out), "--data-dir", str(data_dir),
            "--cache-dir", str(study.parent / "cache")]  # fmt: skip
    capsys.readouterr()
    assert run_app(args) == 0
    printed = capsys.readouterr().out
    assert "user_cold" in printed and "MF + fold-in" in printed
    again = json.loads((out / "report" / "report.json").read_text())
    assert again["scenarios"] == report["scenarios"] and again["topn"] == report["topn"]


def fake_topn(users: list[int], model: list[float], pop: list[float]) -> dict[str, Any]:
    """One run's top-N result: a single setting (user_cold, all, n = 3), recall@10 only."""
    per_user = {"user_ids": users, "methods": {"model": {"recall@10": model},
                                               "popularity": {"recall@10": pop}}}  # fmt: skip
    methods = {r: {"coverage": c} for r, c in (("model", 0.2), ("popularity", 0.1))}
    point = {"n": 3, "n_candidates": 100, "methods": methods, "per_user": per_user}
    return {
        "protocol": {"ks": [10]},
        "k_lists": 10,
        "sizes": [3],
        "rankers": ["model", "popularity"],
        "scenarios": {"user_cold": {"all": [point]}},
    }


def test_pool_topn_counts_each_user_once_and_pairs_the_differences(monkeypatch) -> None:
    monkeypatch.setattr("melu.evaluation.topn_eval.metric_names", lambda ks: ["recall@10"])
    runs = [
        fake_topn([1, 2], [0.2, 0.4], [0.1, 0.1]),
        fake_topn([3], [0.0], [0.3]),
        fake_topn([3], [0.2], [0.3]),
    ]  # user 3 twice (two seeds): averaged first
    point = cv.pool_topn(runs, 200, 0)["scenarios"]["user_cold"]["all"][0]
    assert point["n_users"] == 3 and point["n_runs"] == 3
    assert point["methods"]["model"]["recall@10"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)
    diff = point["comparison"]["popularity"]["recall@10"]
    assert diff["difference"] == pytest.approx((0.1 + 0.3 - 0.2) / 3)
    assert diff["ci"][0] <= diff["difference"] <= diff["ci"][1]
    assert point["methods"]["model"]["coverage"] == pytest.approx(0.2)
    assert point["best_baseline"] == "popularity"
