"""The ``melu`` command line (typer). The only place that parses arguments and prints.

Each command lives in its own module and registers itself on ``app``; ``main`` turns the
library's errors into one clear line and an exit code (1: data/model errors, 2: usage).
"""

from __future__ import annotations

import sys

from melu.cli import cv, data, evaluate, quickstart, recommend, serve, train  # noqa: F401  (register)
from melu.cli.app import app, run_app

__all__ = ["app", "main"]


def main() -> None:
    sys.exit(run_app())
