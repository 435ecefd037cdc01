"""``melu cv``: the K-fold study over users (model vs every baseline, pooled paired CIs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from melu.cli.app import DataDir, Threads, app, echo, resolve_data_dir, use_threads, writable_folder
from melu.cli.progress import Steps
from melu.cli.settings import config_options
from melu.config import Config

if TYPE_CHECKING:
    from melu.evaluation.evaluate import Report


def run_study(
    config: Config,
    *,
    folds: int,
    seeds: int,
    out: Path,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    n_boot: int = 1000,
    pooled_epochs: int | None = None,
    show_progress: bool = True,
    topn: bool = True,
    only_folds: tuple[int, ...] | None = None,
) -> Report:
    """Run (or resume) the study, write ``out/report``, print the pooled summary."""
    from melu.evaluation.baselines import BaselineConfig
    from melu.evaluation.cv import CVOptions, run_cv
    from melu.evaluation.cv_report import summary_table, write_cv_report

    writable_folder(out, "--out")
    config = config.replace(data=config.data.replace(user_split="random"))
    baselines = (
        BaselineConfig() if pooled_epochs is None else BaselineConfig(pooled_epochs=pooled_epochs)
    )
    options = CVOptions(
        folds=folds, seeds=tuple(range(seeds)), n_boot=n_boot, baselines=baselines, topn=topn,
        only_folds=only_folds,
    )  # fmt: skip
    runs = len(only_folds) if only_folds is not None else folds
    with Steps(runs * seeds, "folds", enabled=show_progress) as bar:

        def step(message: str) -> None:
            bar.update(1, message)

        report = run_cv(
            config, resolve_data_dir(data_dir), out, options, cache_dir=cache_dir, progress=step
        )
    target = write_cv_report(report, out / "report")
    echo("pooled per-user query MAE over folds (lower is better); MAML − best with a paired CI")
    echo(summary_table(report))
    if report.topn is not None:
        from melu.evaluation.topn_report import topn_verdict

        echo(topn_verdict(report.topn))
    echo(f"report: {target / 'report.md'}")
    return report


@app.command()
@config_options(exclude=("data.user_split", "data.folds", "data.fold", "train.seed"))
def cv(
    config: Config,
    folds: Annotated[int, typer.Option(min=2, help="Folds of users (each a test fold once).")] = 5,
    seeds: Annotated[int, typer.Option(min=1, help="Training seeds per fold (0..N-1).")] = 1,
    out: Annotated[Path, typer.Option(help="Study folder (resumable).")] = Path("runs/cv"),
    data_dir: DataDir = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Task cache folder.")] = None,
    n_boot: Annotated[int, typer.Option(min=10, help="Bootstrap resamples.")] = 1000,
    pooled_epochs: Annotated[
        int | None, typer.Option(min=1, help="Epoch budget of the pooled baseline.")
    ] = None,
    threads: Threads = 1,
    progress: Annotated[bool, typer.Option(help="A line per fold (a bar on a terminal).")] = True,
    topn: Annotated[
        bool, typer.Option(help="Also rank the whole catalog for new users (top-N, pooled).")
    ] = True,
    only_folds: Annotated[
        str | None,
        typer.Option(
            help="Run and pool only these folds, comma-separated (e.g. 0,1): a long study in "
            "parts; the report says which folds it pools."
        ),
    ] = None,
) -> None:
    """K-fold study: train and evaluate per fold and seed, pool per-user paired differences.

    Every fold is a random user split (--data-seed shuffles the users once); each training option below applies to every fold, and seeds 0..N-1 replace --seed.
    """
    use_threads(threads)
    chosen = parse_folds(only_folds, folds) if only_folds is not None else None
    run_study(
        config, folds=folds, seeds=seeds, out=out, data_dir=data_dir, cache_dir=cache_dir,
        n_boot=n_boot, pooled_epochs=pooled_epochs, show_progress=progress, topn=topn,
        only_folds=chosen,
    )  # fmt: skip


def parse_folds(text: str, folds: int) -> tuple[int, ...]:
    """``"0,2"`` → (0, 2); a usage error naming the value if any is not a fold number."""
    try:
        chosen = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected fold numbers like 0,1", param_hint="--only-folds"
        ) from None
    if not chosen or any(not 0 <= f < folds for f in chosen):
        raise typer.BadParameter(f"{text!r}: folds are 0..{folds - 1}", param_hint="--only-folds")
    return chosen
