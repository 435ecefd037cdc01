"""The typer app and helpers shared by the commands."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from melu.errors import ConfigError, MeluError

try:  # typer >= 0.25 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on the public click
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

    class NoArgsIsHelpError(UsageError):  # type: ignore[no-redef]
        """Never raised by the public click of older typer."""


app = typer.Typer(
    name="melu",
    help="Meta-learned cold-start movie recommendation (MeLU recipe, correct vectorised MAML).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from melu import __version__

        typer.echo(f"melu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Meta-learned cold-start movie recommendation on MovieLens."""


DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding <dataset>/ (default: $MELU_DATA_DIR, else ./data)."),
]

ModelOpt = Annotated[
    Path,
    typer.Option("--model", help="Run folder (runs/NAME) or its model/ bundle folder."),
]


def resolve_data_dir(data_dir: Path | None) -> Path:
    """--data-dir, else $MELU_DATA_DIR, else ./data."""
    if data_dir is not None:
        return data_dir
    env = os.environ.get("MELU_DATA_DIR")
    return Path(env) if env else Path("data")


def writable_folder(path: Path, flag: str) -> Path:
    """``path`` checked writable before any long work starts (the folder itself, or the
    nearest existing folder above it when it does not exist yet: nothing is created here,
    so a command that fails later leaves nothing behind); otherwise a usage error naming
    ``flag``. Every command's output folder goes through here: an existing file there is
    refused and left untouched (never moved aside)."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise typer.BadParameter(
            f"{path}: exists and is not a folder (left untouched; choose another path)",
            param_hint=flag,
        )
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, f"{probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise typer.BadParameter(
            f"{path}: cannot write there ({reason})", param_hint=flag
        ) from None
    return path


Threads = Annotated[
    int,
    typer.Option(
        min=0,
        help="Torch CPU threads (0: torch's default, one per core). One is fastest for "
        "melu's small kernels on a busy machine and close to the best on an idle one.",
    ),
]


def use_threads(threads: int) -> None:
    """Set torch's CPU threads for this process (``0`` keeps torch's default).

    melu's kernels are small (a meta-batch, a few users, a 1,682-item catalog), so a
    second thread gains little and, on a shared machine, oversubscribed cores cost several
    times that (BENCHMARKS.md, "Threads of the CLI").
    """
    if threads > 0:
        import torch

        from melu.config_fields import check_threads

        torch.set_num_threads(check_threads(threads, "--threads"))


def echo(message: str = "") -> None:
    typer.echo(message)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure is one ``error: ...`` line on stderr.

    Exit codes: 0 ok, 1 data or model errors, 2 usage (bad flags or values), 130 interrupted.
    """
    try:
        result = app(args=argv, prog_name="melu", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `melu` or `melu data` alone: the help, as a usage error
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else "", err=True)
        return 2
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "melu"
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message} (see '{command} --help')", err=True)
        return 2
    except ClickException as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except MeluError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2 if isinstance(exc, ConfigError) else 1
    except OSError as exc:  # a file or folder the library did not expect to fail on
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        return 1
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return result if isinstance(result, int) else 0
