"""The typer app and helpers shared by the commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from melu.errors import ConfigError, MeluError

app = typer.Typer(
    name="melu",
    help="Meta-learned cold-start movie recommendation (MeLU recipe, correct vectorised MAML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Meta-learned cold-start movie recommendation on MovieLens."""


DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding <dataset>/ (default: $MELU_DATA_DIR, else ./data)."),
]


def resolve_data_dir(data_dir: Path | None) -> Path:
    """--data-dir, else $MELU_DATA_DIR, else ./data."""
    if data_dir is not None:
        return data_dir
    env = os.environ.get("MELU_DATA_DIR")
    return Path(env) if env else Path("data")


def echo(message: str = "") -> None:
    typer.echo(message)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become ``error: ...`` and exit 1 (2 for bad values).

    Usage errors are reported by click itself (exit 2).
    """
    try:
        app(args=argv, prog_name="melu")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MeluError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0
