"""Exceptions the library raises. The CLI and the service turn them into messages."""

from __future__ import annotations


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


class BundleError(MeluError):
    """A model bundle or checkpoint is missing, truncated or does not match."""
