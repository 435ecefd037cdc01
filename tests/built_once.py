"""Expensive test inputs built once for the whole ``pytest`` run, not once per worker.

``make test`` runs the files on several pytest-xdist workers (separate processes); each
would otherwise train its own copy of the same small model. ``built_once`` builds a folder
in the run's shared temporary directory under a file lock: the first worker to ask builds
it, the others wait and reuse it. Every build is seeded, so a worker gets exactly what it
would have built itself. The folders are read-only by convention: a test that damages a
model damages a copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory every worker of this run sees (pytest's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """The folder ``name`` under ``shared_root``, made by ``build(folder)`` the first time any
    worker asks (a build that failed half way is removed and run again)."""
    root = shared_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder
