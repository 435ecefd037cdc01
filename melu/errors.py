"""Exceptions the library raises. The CLI and the service turn them into messages."""

from __future__ import annotations

from typing import Any

Loc = tuple[
    str | int, ...
]  # where a bad value sits, as pydantic's ``loc``: ("ratings", 2, "rating")


class MeluError(Exception):
    """Base class: every error the library raises on purpose."""


class DataError(MeluError):
    """A data file is missing, malformed or inconsistent (message names file and line)."""


class ConfigError(MeluError, ValueError):
    """A configuration value is out of range or of the wrong type.

    ``field`` names the setting at fault as ``section.name`` (e.g. ``meta.inner_lr``) when
    one is, so the CLI can name its flag.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrainingDiverged(MeluError):
    """Meta-training produced a non-finite loss or weights; nothing was saved from it."""


class StorageError(MeluError):
    """An output cannot be written: its path is taken by a file, or the disk is full
    (nothing half-written is left behind)."""


class BundleError(MeluError):
    """A model bundle or checkpoint is missing, truncated or does not match."""


def format_loc(loc: Loc) -> str:
    """``("ratings", 2, "rating")`` → ``"ratings[2].rating"`` (for messages only)."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class InvalidInput(MeluError, ValueError):
    """A request value the model cannot use, at ``loc`` (e.g. ``("ratings", 2, "rating")``).

    ``value`` is the offending value, ``reason`` says what is wrong with it.
    """

    def __init__(self, loc: Loc, value: Any, reason: str) -> None:
        super().__init__(f"{format_loc(loc)}: {reason} (got {value!r})")
        self.loc = loc
        self.value = value
        self.reason = reason

    @property
    def field(self) -> str:
        """The location as text, e.g. ``"ratings[2].rating"``."""
        return format_loc(self.loc)
