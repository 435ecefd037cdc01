"""Crash-safe folder writes: build in a temporary sibling, then swap it in.

Every saved artefact (task cache, checkpoint, bundle, report) goes through
``atomic_directory``. Replacing a folder takes two renames (``path`` → ``.path.old``, then
the new folder → ``path``); a process killed between them leaves no ``path`` but a complete
``.path.old``. ``recover`` undoes that on the next open or write: every reader of a saved
folder calls it (through ``usable_directory``), so a kill at any moment leaves either the
previous folder or the new one, never nothing and never a mix.

A full disk (or quota) while writing is a ``StorageError`` naming the path and "no space
left on device", whatever library hit it (numpy, pyarrow, safetensors word it differently);
an existing *file* at ``path`` is refused, never moved aside.

Temporary folders are named ``.path.tmp-<pid>-<random>``: one left by a killed process
(its pid no longer runs) is deleted by the next write of the same folder, so killed writes
do not accumulate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from melu.errors import StorageError


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


_FULL = ("no space left on device", "disk quota exceeded", "file too large")


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (raised while writing into ``folder``) means the disk is full: an
    ``OSError`` with ENOSPC/EDQUOT/EFBIG, another library's wording of it (safetensors,
    pyarrow), or a short write (numpy: "N requested and M written") on a disk left with
    less free space than a block."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(exc).lower()
    if any(words in text for words in _FULL):
        return True
    if "requested and" in text and "written" in text:
        with contextlib.suppress(OSError):
            stats = os.statvfs(folder)
            return stats.f_bavail * stats.f_frsize < max(stats.f_bsize, 4096)
    return False


def no_space(path: Path) -> StorageError:
    return StorageError(
        f"{path}: no space left on device (nothing was written; free some space or choose "
        "another folder, then rerun)"
    )


def check_replaceable(path: Path) -> None:
    """``StorageError`` unless ``path`` is absent or a folder (a file is never replaced)."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise StorageError(
            f"{path}: exists and is not a folder; it was left untouched "
            "(choose another path, or remove it)"
        )


def write_text_atomic(path: Path, text: str) -> None:
    """Write one file through a temporary sibling and a rename: a reader sees the old
    content or the new, and a full disk leaves neither a temporary file nor half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        full = disk_full(exc, path.parent)  # before the cleanup frees the space again
        tmp.unlink(missing_ok=True)
        if full:
            raise no_space(path) from exc
        raise


@contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path``.

    On any exception (including KeyboardInterrupt) the temporary folder is deleted and
    ``path`` is left as it was; a full disk is a ``StorageError`` naming ``path``. A kill
    (SIGKILL, power loss) at any point leaves ``path`` or its ``.old`` copy, which
    ``recover`` restores. An existing file at ``path`` is a ``StorageError``, untouched.
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if disk_full(exc, path.parent.parent):
            raise no_space(path) from exc
        raise
    recover(path)
    remove_orphans(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    except OSError as exc:
        if disk_full(exc, path.parent):
            raise no_space(path) from exc
        raise
    old = _old(path)
    try:
        yield tmp
        _make_readable(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = disk_full(exc, path.parent)  # before the cleanup frees the space again
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise no_space(path) from exc
        raise
