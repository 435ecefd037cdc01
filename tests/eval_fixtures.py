"""A tiny trained ML-100K run and its evaluation report, shared by the evaluation tests.

Both are cached per process: several test files use them, and each would otherwise train
and evaluate its own copy.
"""

from __future__ import annotations

from pathlib import Path

from melu.bundle import load_bundle
from melu.config import Config, TrainConfig
from melu.evaluation.baselines import BaselineConfig
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
            train=TrainConfig(epochs=1, max_tasks_per_epoch=64, device="cpu"),
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
