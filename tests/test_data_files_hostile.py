"""Hostile data files (issue 16, class 8): empty files and loose numbers are refused by
name, like every other malformed row, by the readers and by a real ``melu prepare``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_process import melu, one_line

from melu.data.movielens import load_movielens
from melu.errors import DataError

Edit = Callable[[list[str]], list[str]]


def ml100k_with(data_dir: Path, tmp_path: Path, name: str, edit: Edit) -> Path:
    """A data folder holding ml-100k with ``name`` rewritten as ``edit(lines)``."""
    root = tmp_path / "data" / "ml-100k"
    root.mkdir(parents=True)
    for f in ("u.data", "u.user", "u.item"):
        if f != name:
            (root / f).symlink_to(data_dir / "ml-100k" / f)
    lines = (data_dir / "ml-100k" / name).read_text(encoding="latin-1").splitlines()
    text = "\n".join(edit(lines))
    (root / name).write_text(text + "\n" if text else "", encoding="latin-1")
    return root.parent


def set_field(line: int, column: int, value: str, sep: str) -> Edit:
    def edit(lines: list[str]) -> list[str]:
        parts = lines[line - 1].split(sep)
        parts[column] = value
        return [*lines[: line - 1], sep.join(parts), *lines[line:]]

    return edit


PROBES: list[tuple[str, Edit, str]] = [
    ("u.data", lambda ls: [], r"u\.data: empty file"),
    ("u.data", lambda ls: [""] * 50, r"u\.data: empty file"),
    ("u.item", lambda ls: [], r"u\.item: empty file"),
    ("u.user", lambda ls: [], r"u\.user: empty file"),
    ("u.data", set_field(53, 0, "1e3", "\t"), r"u\.data:53: malformed row: '1e3\\t"),
    ("u.data", set_field(7, 1, "1.0", "\t"), r"u\.data:7: malformed row"),
    ("u.user", lambda ls: [*ls[:10], ls[10].rsplit("|", 1)[0], *ls[11:]], r"u\.user:11: "),
    ("u.user", set_field(3, 1, "+5", "|"), r"u\.user:3: malformed row"),
    ("u.item", lambda ls: [*ls[:4], ls[4].rsplit("|", 1)[0], *ls[5:]], r"u\.item:5: "),
]


@pytest.mark.parametrize(("name", "edit", "message"), PROBES)
def test_empty_files_and_loose_rows_are_refused_by_file_and_line(
    data_dir: Path, tmp_path: Path, name: str, edit: Edit, message: str
) -> None:
    folder = ml100k_with(data_dir, tmp_path, name, edit)
    with pytest.raises(DataError, match=message) as info:
        load_movielens("ml-100k", folder)
    assert "\n" not in str(info.value)


def test_the_untouched_files_still_read_the_same(data_dir: Path) -> None:
    data = load_movielens("ml-100k", data_dir)
    assert (len(data.ratings), len(data.users), len(data.items)) == (100_000, 943, 1682)
    assert data.users["zip"].str.len().min() == 5


def test_melu_prepare_on_a_loose_id_is_one_line_with_file_and_line(
    data_dir: Path, tmp_path: Path
) -> None:
    folder = ml100k_with(data_dir, tmp_path, "u.data", set_field(53, 0, "1e3", "\t"))
    done = melu("prepare", "--data-dir", str(folder), "--out", str(tmp_path / "cache"))
    assert "u.data:53: malformed row" in one_line(done, 1)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_empty_ratings_csv_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ml-latest-small"
    root.mkdir()
    (root / "ratings.csv").write_text("")
    (root / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    with pytest.raises(DataError, match=r"ratings\.csv: empty file"):
        load_movielens("ml-latest-small", tmp_path)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv: no ratings"):
        load_movielens("ml-latest-small", tmp_path)
    shutil.rmtree(root)
