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
