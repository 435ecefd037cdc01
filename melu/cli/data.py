"""``melu data download|list`` and ``melu prepare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from melu.cli.app import DataDir, app, echo, resolve_data_dir, writable_folder
from melu.cli.progress import bar as progress_bar
from melu.cli.settings import config_options
from melu.config import Config
from melu.data.download import download_dataset, is_present, required_files
from melu.data.movielens import DATASETS
from melu.prepare import prepare as prepare_tasks
from melu.tasks import SCENARIOS

data_app = typer.Typer(
    help="Get MovieLens data sets from GroupLens and see what is present.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


def _dataset(value: str) -> str:
    if value not in DATASETS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DATASETS)}")
    return value


DatasetArg = Annotated[str, typer.Argument(help=" | ".join(DATASETS), callback=_dataset)]


class _Bar:
    """A tqdm bar (on a terminal only) driven by the ``(bytes_done, bytes_total)`` callback."""

    def __init__(self, name: str) -> None:
        self.bar = progress_bar(desc=name, unit="B", unit_scale=True, unit_divisor=1024)

    def __call__(self, done: int, total: int | None) -> None:
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)


@data_app.command("download")
def download(
    dataset: DatasetArg,
    data_dir: DataDir = None,
    url_base: Annotated[
        str | None,
        typer.Option(
            help="Mirror to fetch <dataset>.zip(.md5) from (default: $MELU_DOWNLOAD_URL, else GroupLens)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=86400, help="Seconds the whole download may take.")
    ] = 3600.0,
    stall_timeout: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds without a byte before giving up.")
    ] = 60.0,
) -> None:
    """Fetch the official GroupLens zip, verify it (published MD5; SHA-256 of ML-100K/ML-1M files) and unpack it atomically into <data-dir>/<dataset>/.

    MovieLens belongs to GroupLens Research: research use only, never redistribute it.
    """
    root = resolve_data_dir(data_dir)
    if is_present(dataset, root) and not force:
        echo(f"{dataset} is already in {root / dataset} (use --force to download again)")
        return
    bar = _Bar(f"{dataset}.zip")
    try:
        folder = download_dataset(
            dataset, root, url_base=url_base, progress=bar, force=force,
            deadline_s=timeout, stall_s=stall_timeout,
        )  # fmt: skip
    finally:
        bar.bar.close()
    echo(f"{dataset}: verified and unpacked into {folder}")


@data_app.command("list")
def list_datasets(data_dir: DataDir = None) -> None:
    """Show which data sets are present in the data folder."""
    root = resolve_data_dir(data_dir)
    echo(f"data folder: {root}")
    for name in DATASETS:
        folder = root / name
        if is_present(name, root):
            size = sum((folder / f).stat().st_size for f in required_files(name))
            echo(f"  {name:<16} present  {size / 2**20:8.1f} MiB")
        else:
            missing = [f for f in required_files(name) if not (folder / f).is_file()]
            echo(f"  {name:<16} missing  {', '.join(missing)}  (melu data download {name})")


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name:<16}{s['users']:>8}{s['tasks']:>8}{s['support_min']:>6}"
        f"{s['support_median']:>8g}{s['support_max']:>6}{s['items']:>8}{s['ratings']:>10}"
    )


def print_summary(stats: dict[str, Any]) -> None:
    """The per-scenario table and the cleaning counts of ``Prepared.stats``."""
    echo(
        f"{stats['dataset']}: {stats['ratings']} ratings, {stats['users']} users, "
        f"{stats['items']} items ({stats['new_items']} new); roles "
        + ", ".join(f"{k} {v}" for k, v in stats["roles"].items())
    )
    dropped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats["dropped"].items())
    echo(f"dropped rows: {dropped or 'none'}")
    echo(
        f"{'scenario':<16}{'users':>8}{'tasks':>8}{'sup':>6}{'median':>8}{'max':>6}"
        f"{'items':>8}{'ratings':>10}"
    )
    for name in SCENARIOS:
        if name in stats["scenarios"]:
            echo(_row(name, stats["scenarios"][name]))


@app.command()
@config_options("data", aliases={"data.seed": ("--seed",)})
def prepare(
    config: Config,
    data_dir: DataDir = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "--cache-dir",
            help="Cache folder (default: $MELU_CACHE_DIR, else .melu-cache).",
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Build again even if cached.")] = False,
) -> None:
    """Build (or reuse) the cached per-user tasks of every scenario and print a summary.

    Protocol: the newest --new-item-fraction of items (by release date) are new items; users are ordered by first rating (--user-split time) or shuffled (random): the oldest --train-fraction train, the next --validation-fraction validate, the rest are the cold test users. A user with --min-ratings..--max-ratings ratings in a scenario's items forms a task: --query-size query ratings (seeded random, or the last ones with --query-order time), the rest (at most --max-support) the support. Scenarios: train, validation, warm (train users' held-out queries), user_cold, item_cold, user_item_cold.

    Cleaning: duplicate (user, item) ratings keep the latest; ratings of unknown items (and, with demographics, unknown users) are dropped and counted; a rating outside the format's scale, or a malformed row, is an error naming file:line (exit 1).

    The cache is keyed by the data files' SHA-256 and these settings; a change rebuilds it.
    """
    if out is not None:
        writable_folder(out, "--out")
    prepared = prepare_tasks(
        config.data, resolve_data_dir(data_dir), out, rebuild=rebuild, progress=echo
    )
    print_summary(prepared.stats)
