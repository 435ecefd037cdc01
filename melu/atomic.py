"""Crash-safe folder writes: build in a temporary sibling, then swap it in.

Every saved artefact (task cache, checkpoint, bundle, report) goes through
``atomic_directory``. Replacing a folder takes two renames (``path`` → ``.path.old``, then
the new folder → ``path``); a process killed between them leaves no ``path`` but a complete
``.path.old``. ``recover`` undoes that on the next open or write: every reader of a saved
folder calls it (through ``usable_directory``), so a kill at any moment leaves either the
previous folder or the new one, never nothing and never a mix.

Temporary folders are named ``.path.tmp-<pid>-<random>``: one left by a killed process
(its pid no longer runs) is deleted by the next write of the same folder, so killed writes
do not accumulate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(path: Path) -> None:
    """Delete temporary siblings of ``path`` whose writing process no longer runs."""
    prefix = _tmp_prefix(path)
    with contextlib.suppress(OSError):
        for sibling in path.parent.iterdir():
            if not sibling.name.startswith(prefix):
                continue
            pid_text = sibling.name[len(prefix) :].split("-", 1)[0]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                shutil.rmtree(sibling, ignore_errors=True)


def recover(path: Path | str) -> Path:
    """Finish a replacement that was killed between its two renames; return the folder.

    If ``path`` is missing but its complete previous version ``.path.old`` is there, it is
    renamed back. Where that is not allowed (a read-only mount), the ``.old`` folder itself
    is returned so readers still find the data. Otherwise ``path`` is returned unchanged.
    """
    path = Path(path)
    old = _old(path)
    if path.exists() or not old.is_dir():
        return path
    try:
        os.replace(old, path)
    except OSError:
        return old
    return path


usable_directory = recover


def _make_readable(folder: Path) -> None:
    """Folders 0755 and files 0644, as ordinary files are: ``mkdtemp`` makes 0700 and some
    writers (safetensors) 0600, which a service running as another user could not read."""
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


@contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    On any exception (including KeyboardInterrupt) the temporary folder is deleted and
    ``path`` is left as it was. A kill (SIGKILL, power loss) at any point leaves ``path``
    or its ``.old`` copy, which ``recover`` restores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    old = _old(path)
    try:
        yield tmp
        _make_readable(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
