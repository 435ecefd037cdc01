"""A tiny trained ML-100K run, its evaluation report and a tiny K-fold study (``melu cv``),
shared by the evaluation tests.

Each is built once per ``pytest`` run (``built_once``: shared by the xdist workers):
several test files use them, and each would otherwise train and evaluate its own copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from built_once import built_once

from melu.bundle import load_bundle
from melu.cli import run_app
from melu.config import Config, TrainConfig
from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.evaluate import Report, evaluate
from melu.evaluation.mf import MFConfig
from melu.evaluation.report import write_report
from melu.evaluation.topn_baselines import TopNBaselineConfig
from melu.prepare import Prepared
from melu.training.train import train

FAST_BASELINES = BaselineConfig(
    pooled_epochs=2, finetune_lr_scales=(1.0,), mf=MFConfig(ranks=(4,), regs=(5.0,))
)
# the top-N baselines' grids cut to two points or one (every kind still picked on validation)
FAST_TOPN = TopNBaselineConfig(
    knn_neighbours=(0, 100), ease_lambdas=(1e3, 2e4), liked_lambdas=(2e3, 2e4),
    walk_settings=((0.5, 0.2), (1.0, 0.4)),
    als_factors=(32,), als_regularization=(100.0,), als_alpha=(3.0, 10.0),
    rating=FAST_BASELINES,
)  # fmt: skip
FAST_OPTIONS = {
    "steps_curve": (0, 1, 2), "support_sizes": (1, 5), "n_boot": 100, "topn_baselines": FAST_TOPN,
}  # fmt: skip


def tiny_run(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with ``model/`` after one short epoch of meta-training (built once per
    ``pytest`` run: ``built_once``)."""

    def build(folder: Path) -> None:
        config = Config(
            data=prepared.config,
            train=TrainConfig(
                epochs=1, max_tasks_per_epoch=64, device="cpu", rank_epochs=0, rank_mix_passes=1
            ),
        )
        train(config, prepared, folder)

    return built_once(tmp_path_factory, "eval-tiny-run", build)


def tiny_report_dir(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run evaluated with small curves, budgets and bootstrap, written by
    ``write_report`` (report.json, report.md, plots), built once per ``pytest`` run."""

    def build(folder: Path) -> None:
        bundle = load_bundle(tiny_run(prepared, tmp_path_factory) / "model")
        report = evaluate(bundle, prepared, baselines=FAST_BASELINES, **FAST_OPTIONS)
        write_report(report, folder)

    return built_once(tmp_path_factory, "eval-tiny-report", build)


def tiny_report(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The tiny run's report (``tiny_report_dir``) as ``Report.load`` reads it."""
    return Report.load(tiny_report_dir(prepared, tmp_path_factory))


# `melu cv` of the tiny study: 2 folds of ML-100K (random user split), one seed, one short
# epoch per fold, the head picked in one pass, small baseline budgets and bootstrap
TINY_CV_FLAGS = (
    "--dataset", "ml-100k", "--folds", "2", "--seeds", "1", "--epochs", "1",
    "--max-tasks-per-epoch", "32", "--rank-mix-passes", "1", "--pooled-epochs", "1",
    "--n-boot", "50", "--device", "cpu", "--no-progress",
)  # fmt: skip


def tiny_cv_study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``--out`` folder of a real ``melu cv`` (``TINY_CV_FLAGS``): its folds and the
    pooled ``report/`` (report.json and its plots), built once per ``pytest`` run; its
    task cache is the folder's sibling ``cache``."""

    def build(folder: Path) -> None:
        args = ["cv", *TINY_CV_FLAGS, "--out", str(folder / "cv"), "--data-dir", str(data_dir),
                "--cache-dir", str(folder / "cache")]  # fmt: skip
        if run_app(args) != 0:
            raise RuntimeError("the tiny `melu cv` study failed: its error is printed above")

    return built_once(tmp_path_factory, "eval-tiny-cv", build) / "cv"


def tiny_cv_report(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study's ``report`` folder (``tiny_cv_study``)."""
    return tiny_cv_study(data_dir, tmp_path_factory) / "report"
