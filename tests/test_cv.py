"""The K-fold study: pooling by hand, and ``melu cv`` end to end with resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import melu.evaluation.cv as cv
from melu.cli import run_app
from melu.evaluation.evaluate import METHODS


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


def test_cli_cv_writes_the_report_and_resumes_without_retraining(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    out = tmp_path / "cv"
    args = ["cv", "--dataset", "ml-100k", "--folds", "2", "--seeds", "1", "--out", str(out),
            "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
            "--max-tasks-per-epoch", "32", "--pooled-epochs", "1", "--n-boot", "50",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert run_app(args) == 0
    printed = capsys.readouterr().out
    assert "user_cold" in printed and "MF + fold-in" in printed
    report = json.loads((out / "report" / "report.json").read_text())
    for name in ("report.md", "methods.png", "diffs.png", "support_curve.png"):
        assert (out / "report" / name).stat().st_size > 0
    assert report["meta"]["folds"] == 2 and len(report["meta"]["baselines"]) == 2
    cold = report["scenarios"]["user_cold"]
    assert set(cold["methods"]) == set(METHODS)
    assert {"baseline_predictor", "mf", "maml"} <= set(cold["support_curve"])
    results = [json.loads(p.read_text()) for p in sorted(out.glob("folds/*/result/result.json"))]
    tested = [set(r["scenarios"]["user_cold"]["per_user"]["user_ids"]) for r in results]
    assert len(tested) == 2 and not tested[0] & tested[1]
    assert cold["n_users"] == len(tested[0]) + len(tested[1])

    def no_training(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(cv, "train", no_training)
    assert run_app(args) == 0
    again = json.loads((out / "report" / "report.json").read_text())
    assert again["scenarios"] == report["scenarios"]
