"""The public Python API, in five lines::

    import melu
    bundle = melu.train("ml-100k", out="runs/ml100k", epochs=10)    # → runs/ml100k/model
    model = melu.load(bundle)                                       # a Recommender
    top = model.recommend({"gender": "F", "age": 25}, [(50, 5), (181, 4)], k=10)
    report = melu.evaluate(bundle)                                  # four scenarios

``train`` and ``evaluate`` are what ``melu train`` and ``melu evaluate`` run, without the
printing: settings are the CLI's flags as keywords (``epochs=10``, ``inner_lr=0.3``,
``seed`` is the training seed and ``data_seed`` the data protocol's), your own data is
``ratings=`` / ``items=`` / ``users=`` files (README, "Your own data"), and the data folder
is ``data_dir``, else ``$MELU_DATA_DIR``, else ``./data``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from melu.bundle import find_bundle, load_bundle
from melu.config import SECTIONS, Config
from melu.errors import ConfigError
from melu.evaluation.baselines import BaselineConfig
from melu.evaluation.evaluate import Report
from melu.serving.recommender import Recommender
from melu.tasks import EVAL_SCENARIOS

# keyword → (section, field) where a field name is in two sections (the CLI's names)
ALIASES = {"seed": ("train", "seed"), "data_seed": ("data", "seed")}


def _data_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir or os.environ.get("MELU_DATA_DIR") or "data")


def configure(base: Config | None = None, **settings: Any) -> Config:
    """``base`` (default: ``Config()``) with ``settings`` given by field name
    (``epochs=5``); a name that is no field, or a bad value, raises ``ConfigError``."""
    where: dict[str, tuple[str, str]] = dict(ALIASES)
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            where.setdefault(f.name, (section, f.name))
    changes: dict[str, dict[str, Any]] = {}
    for name, value in settings.items():
        if name not in where:
            raise ConfigError(f"{name}: no such setting (see `melu train --help`)", field=name)
        section, field = where[name]
        changes.setdefault(section, {})[field] = value
    config = base or Config()
    return config.replace(**{s: getattr(config, s).replace(**kw) for s, kw in changes.items()})


def train(
    dataset: str | None = None,
    *,
    out: Path | str = "runs/train",
    config: Config | None = None,
    data_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    resume: bool = False,
    threads: int | None = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> Path:
    """Prepare the tasks (cached), meta-train, write ``out/model``; returns that path.

    ``dataset``: a MovieLens name (default: ``config``'s, else ml-100k); or pass
    ``ratings="my.csv"`` (plus ``items=``, ``users=``). ``settings``: any config field by
    name, applied over ``config``. ``threads``: torch CPU threads for this process (None
    leaves them). ``progress`` receives the trainer's events (``epoch_end`` etc.).
    """
    from melu.prepare import prepare
    from melu.training.train import train as run

    if dataset is not None:
        settings["dataset"] = dataset
    config = configure(config, **settings)
    if threads is not None:
        torch.set_num_threads(threads)
    prepared = prepare(config.data, _data_dir(data_dir), cache_dir, mmap=True)
    return run(config, prepared, out, resume=resume, progress=progress).bundle


def load(path: Path | str, *, threads: int | None = 1, onboarding: bool = True) -> Recommender:
    """The model bundle at ``path`` (a bundle, or a run folder holding ``model/``) ready to
    ``recommend(user, ratings, k=10)`` and ``predict``; ``threads`` torch threads per call."""
    return Recommender.from_bundle(path, threads=threads, onboarding=onboarding)


def evaluate(
    model: Path | str,
    *,
    data_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    out: Path | str | None = None,
    scenarios: Sequence[str] = EVAL_SCENARIOS,
    support_sizes: Sequence[int] = (1, 3, 5, 10, 20),
    seed: int = 0,
    baselines: BaselineConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Evaluate the bundle at ``model`` on its own data protocol against the baselines.

    ``report.scenarios[name]["methods"]`` holds each method's per-user query MAE and CI
    (``maml_after`` is the adapted model). ``out``: also write report.json/report.md and
    the plots there (as ``melu evaluate``). ``baselines``: their budgets and grids
    (default: ``BaselineConfig(seed=seed)``, what ``melu evaluate`` fits).
    """
    from melu.evaluation.evaluate import evaluate as run
    from melu.prepare import prepare

    bundle = load_bundle(find_bundle(model))
    prepared = prepare(bundle.config.data, _data_dir(data_dir), cache_dir)
    report = run(bundle, prepared, support_sizes=support_sizes, seed=seed,
                 scenarios=tuple(scenarios), baselines=baselines, progress=progress)  # fmt: skip
    if out is not None:
        from melu.evaluation.report import write_report

        write_report(report, Path(out))
    return report
