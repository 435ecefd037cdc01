"""atomic_directory: a folder appears whole or not at all, and replaces an old one only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from melu.atomic import atomic_directory


def test_a_completed_write_replaces_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # untouched until the write completes
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or .old left


def test_a_failed_write_leaves_the_old_folder_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out"
    with pytest.raises(KeyboardInterrupt), atomic_directory(target):
        raise KeyboardInterrupt
    assert not target.exists()
    assert list((tmp_path / "deep").iterdir()) == []


KILL_BETWEEN_RENAMES = """
import os, sys, time
from pathlib import Path
from melu import atomic

real_replace = os.replace
calls = []

def replace_then_hang(src, dst):
    real_replace(src, dst)
    calls.append(dst)
    if len(calls) == 1:  # path -> .path.old done, the new folder not yet in place
        print("between", flush=True)
        time.sleep(60)

atomic.os.replace = replace_then_hang
with atomic.atomic_directory(Path(sys.argv[1])) as tmp:
    (tmp / "v.txt").write_text("new")
"""


def _kill_between_renames(target: Path) -> None:
    """Run a real process that replaces ``target`` and SIGKILL it between the renames."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "between"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_kill_between_the_renames_loses_nothing(tmp_path: Path) -> None:
    from melu.atomic import recover

    target = tmp_path / "checkpoint"
    target.mkdir()
    (target / "v.txt").write_text("old")
    _kill_between_renames(target)
    assert not target.exists()  # the dangerous moment: only .checkpoint.old and the temp
    assert recover(target) == target
    assert (target / "v.txt").read_text() == "old"
    with atomic_directory(target) as tmp:  # the next write also clears the killed temp
        (tmp / "v.txt").write_text("newer")
    assert (target / "v.txt").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_read_only_parent_still_finds_the_old_copy(tmp_path: Path) -> None:
    import os

    from melu.atomic import recover

    target = tmp_path / "model"
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "v.txt").write_text("old")
    os.chmod(tmp_path, 0o555)
    try:
        found = recover(target)
        if os.access(tmp_path, os.W_OK):  # root ignores the mode: the rename succeeds
            assert found == target
        else:
            assert found == old
        assert (found / "v.txt").read_text() == "old"
    finally:
        os.chmod(tmp_path, 0o755)


def test_saved_folders_are_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("x")
        (tmp / "f").chmod(0o600)  # as safetensors writes weights
    assert target.stat().st_mode & 0o777 == 0o755
    assert (target / "f").stat().st_mode & 0o777 == 0o644
