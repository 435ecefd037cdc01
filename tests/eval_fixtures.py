"""A tiny trained ML-100K run, its evaluation report and a tiny K-fold study, shared by
the evaluation tests.

All are cached per process: several test files use them, and each would otherwise train
and evaluate its own copy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from melu.bundle import load_bundle
from melu.config import Config, DataConfig, TrainConfig
from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.cv import CVOptions, run_cv
from melu.evaluation.cv_report import write_cv_report
from melu.evaluation.evaluate import Report, evaluate
from melu.prepare import Prepared
from melu.training.train import train

FAST_BASELINES = BaselineConfig(pooled_epochs=2, finetune_lr_scales=(1.0,))
FAST_OPTIONS = {"steps_curve": (0, 1, 2), "support_sizes": (1, 5), "n_boot": 100}
_CACHE: dict[str, object] = {}


def tiny_run(prepared: Prepared, root: Path) -> Path:
    """A run folder (``root/run``) with ``model/`` after one short epoch of meta-training."""
    if "run" not in _CACHE:
        config = Config(
            data=prepared.config,
            train=TrainConfig(
                epochs=1, max_tasks_per_epoch=64, device="cpu", rank_epochs=2, rank_mix_passes=1
            ),
        )
        train(config, prepared, root / "run")
        _CACHE["run"] = root / "run"
    return _CACHE["run"]  # type: ignore[return-value]


def tiny_report(prepared: Prepared, root: Path) -> Report:
    """The tiny run evaluated with small curves, budgets and bootstrap."""
    if "report" not in _CACHE:
        bundle = load_bundle(tiny_run(prepared, root) / "model")
        _CACHE["report"] = evaluate(bundle, prepared, baselines=FAST_BASELINES, **FAST_OPTIONS)
    return _CACHE["report"]  # type: ignore[return-value]


def tiny_cv_report(data_dir: Path, root: Path) -> Path:
    """``root/cv/report`` of a real 2-fold ``run_cv`` study on ML-100K (one seed, one short
    epoch per fold, small baseline budgets and bootstrap): report.json and its plots."""
    if "cv" not in _CACHE:
        config = Config(
            data=DataConfig(dataset="ml-100k", user_split="random"),
            train=TrainConfig(
                epochs=1, max_tasks_per_epoch=32, device="cpu", rank_epochs=2, rank_mix_passes=1
            ),
        )
        options = CVOptions(folds=2, seeds=(0,), n_boot=50, baselines=FAST_BASELINES)
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # as `melu cv` does: tiny batches, 5x faster on a busy CPU
        try:
            report = run_cv(config, data_dir, root / "cv", options, cache_dir=root / "cv-cache")
        finally:
            torch.set_num_threads(before)
        _CACHE["cv"] = write_cv_report(report, root / "cv" / "report")
    return _CACHE["cv"]  # type: ignore[return-value]
