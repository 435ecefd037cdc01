"""``melu quickstart``: the main job end to end, as `make quickstart` runs it.

Gets the data set (download when missing), prepares its tasks, meta-trains with the
default configuration, evaluates all four scenarios against the baselines, and shows
recommendations for a sample new user plus the line that starts the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from melu.cli.app import DataDir, app, echo, resolve_data_dir
from melu.cli.settings import config_options
from melu.config import Config


@app.command()
@config_options("data.dataset", "train.device", config_file=False)
def quickstart(
    config: Config,
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Run folder for the model and report.")] = Path(
        "runs/quickstart"
    ),
) -> None:
    """Download (if needed), prepare, train, evaluate and recommend — the whole job."""
    from melu.cli.evaluate import run_evaluation
    from melu.cli.recommend import print_sample_recommendations
    from melu.cli.train import run_training
    from melu.data.download import ensure_dataset

    dataset = config.data.dataset
    root = resolve_data_dir(data_dir)
    echo(f"[1/4] data: {dataset} in {root}")
    ensure_dataset(dataset, root, progress=None)
    echo("[2/4] meta-training (prepares and caches the tasks first)")
    bundle_path = run_training(config, data_dir=root, out=out)
    echo(f"[3/4] evaluating {bundle_path}")
    run_evaluation(model=bundle_path, data_dir=root, out=out / "eval")
    echo("[4/4] recommendations for a new user (F, 25) who rated three movies")
    print_sample_recommendations(bundle_path)
    echo()
    echo(f"Start the service:  .venv/bin/melu serve --model {bundle_path}")
