"""Progress output: a tqdm bar on a terminal, one plain line per step in a log.

A bar redraws itself with ``\\r`` frames: right on a terminal, kilobytes of noise in a
piped or redirected log (a CI job, ``nohup``, ``| tee``). So where stderr is not a
terminal, each step (an evaluation phase, a fold, a chunk of users) is one plain line
instead, as nanoGPT's training logs are; ``melu train`` prints its one line per epoch
either way. Every command's ``--no-progress`` turns both off.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any

import typer
from tqdm import tqdm


def is_terminal(stream: IO[Any] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def bar(**options: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar, drawn only on a terminal (``disable`` elsewhere)."""
    enabled = options.pop("enabled", True)
    return tqdm(**options, disable=not (enabled and is_terminal()))


class Steps:
    """A counted sequence of steps: ``update(n, note)`` after each one.

    On a terminal a tqdm bar (``note`` as its postfix); elsewhere one line per update on
    stderr, ``"{desc} {done}/{total} {unit}: {note}"``; nothing when ``enabled`` is false.
    """

    def __init__(
        self, total: int | None, desc: str, *, unit: str = "", enabled: bool = True
    ) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.lines = enabled and not is_terminal()
        self.bar = bar(total=total, desc=desc, unit=unit or "it", enabled=enabled)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.lines:
            of = f"/{self.total}" if self.total is not None else ""
            unit = f" {self.unit}" if self.unit else ""
            typer.echo(f"{self.desc} {self.done}{of}{unit}{': ' + note if note else ''}", err=True)
            return
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Steps:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
