"""``melu prepare`` (and, later, ``melu data download``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from melu.cli.app import app, echo, resolve_data_dir
from melu.config import DataConfig
from melu.prepare import prepare as prepare_tasks

DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding <dataset>/ (default: $MELU_DATA_DIR, else ./data)."),
]


@app.command()
def prepare(
    dataset: Annotated[
        str, typer.Option(help="ml-100k, ml-1m, ml-latest-small, ml-latest, ml-25m or ml-32m.")
    ] = "ml-100k",
    data_dir: DataDir = None,
    out: Annotated[
        Path | None, typer.Option(help="Cache folder (default: $MELU_CACHE_DIR, else .melu-cache).")
    ] = None,
    seed: int = 0,
) -> None:
    """Build (or reuse) the cached per-user tasks of every scenario and print a summary."""
    config = DataConfig(dataset=dataset, seed=seed)
    prepared = prepare_tasks(config, resolve_data_dir(data_dir), out, progress=echo)
    echo(
        f"{'scenario':<16}{'users':>7}{'tasks':>7}{'sup min':>9}{'median':>8}{'max':>6}{'items':>7}{'ratings':>9}"
    )
    for name, s in prepared.stats["scenarios"].items():
        echo(
            f"{name:<16}{s['users']:>7}{s['tasks']:>7}{s['support_min']:>9}{s['support_median']:>8g}"
            f"{s['support_max']:>6}{s['items']:>7}{s['ratings']:>9}"
        )
