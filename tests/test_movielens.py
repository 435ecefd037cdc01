"""Readers: real ml-100k, real ml-1m user/movie files, CSV family and malformed input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from melu.data.movielens import dataset_files, load_movielens
from melu.errors import DataError

ML1M_REAL = ("users.dat", "movies.dat", "movies_extrainfos.dat")


def write_csv_family(root: Path, ratings: list[str], movies: list[str] | None = None) -> Path:
    """A tiny ml-latest-small folder: ``ratings.csv`` rows and ``movies.csv`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n"
    )
    movies = movies or [
        "1,Toy Story (1995),Adventure|Animation|Children",
        '2,"American President, The (1995)",Comedy|Drama|Romance',
        "3,Untitled,(no genres listed)",
    ]
    (root / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    return root.parent


def small_ml100k(tmp_path: Path, data_dir: Path, lines: list[str]) -> Path:
    """ml-100k folder in ``tmp_path`` with the real user/item files and ``lines`` as u.data."""
    root = tmp_path / "ml-100k"
    root.mkdir()
    for name in ("u.user", "u.item"):
        (root / name).symlink_to(data_dir / "ml-100k" / name)
    (root / "u.data").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_ml100k_real(data_dir: Path) -> None:
    data = load_movielens("ml-100k", data_dir)
    assert (len(data.ratings), len(data.users), len(data.items)) == (100_000, 943, 1682)
    assert data.ratings["user_id"].nunique() == 943
    assert data.rating_scale == (1.0, 5.0) and data.rating_step == 1.0
    assert set(data.users["age"]) <= {"1", "18", "25", "35", "45", "50", "56"}
    assert data.users.loc[data.users["user_id"] == 1, "age"].item() == "18"  # raw age 24
    assert data.items.loc[data.items["item_id"] == 543, "title"].item() == "Misérables, Les (1995)"
    assert data.dropped == {
        "duplicate_ratings": 0,
        "ratings_of_unknown_items": 0,
        "ratings_of_unknown_users": 0,
    }
    toy = data.items.loc[data.items["item_id"] == 1].iloc[0]
    assert toy["year"] == 1995 and toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert data.ratings.dtypes["user_id"] == np.int32
    assert data.ratings.dtypes["rating"] == np.float32


def test_ml1m_real_users_movies_with_written_ratings(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    for name in ML1M_REAL:
        (root / name).symlink_to(data_dir / "ml-1m" / name)
    (root / "ratings.dat").write_text(
        "1::1193::5::978300760\n"
        "1::661::3::978302109\n"
        "1::661::4::978302999\n"  # duplicate pair: the later rating wins
        "2::99999::4::978300000\n"  # unknown item: dropped and counted
        "6040::1::2::978300001\n"
    )
    data = load_movielens("ml-1m", tmp_path)
    assert (len(data.users), len(data.items), len(data.ratings)) == (6040, 3883, 3)
    assert data.dropped["duplicate_ratings"] == 1
    assert data.dropped["ratings_of_unknown_items"] == 1
    assert data.ratings.query("user_id == 1 and item_id == 661")["rating"].item() == 4.0
    items = data.items.set_index("item_id")
    assert items.loc[73, "title"] == "Misérables, Les (1995)"  # latin-1
    assert items.loc[1, "directors"] == ["John Lasseter"] and items.loc[1, "rate"] == "G"
    assert items.loc[860, "directors"] == []  # absent from MeLU's file
    assert set(data.users["age"].astype(int)) == {1, 18, 25, 35, 45, 50, 56}
    plain = load_movielens("ml-1m", tmp_path, extra_info=False)
    assert "directors" not in plain.items.columns
    assert len(dataset_files("ml-1m", tmp_path)) == 4


def test_csv_family_half_stars_no_demographics(tmp_path: Path) -> None:
    rows = ["1,1,3.5,1000", "1,2,0.5,1001", "2,1,5.0,1002", "2,3,4,1003", "2,7,4,1004"]
    data = load_movielens("ml-latest-small", write_csv_family(tmp_path / "ml-latest-small", rows))
    assert data.rating_scale == (0.5, 5.0) and data.rating_step == 0.5
    assert list(data.users.columns) == ["user_id"] and data.user_fields == []
    assert list(data.users["user_id"]) == [1, 2]
    assert data.dropped["ratings_of_unknown_items"] == 1
    items = data.items.set_index("item_id")
    assert items.loc[2, "title"] == "American President, The (1995)"
    assert items.loc[3, "genres"] == [] and items.loc[1, "year"] == 1995


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("1\t1\t5", "malformed row"),
        ("1\tx\t5\t881250949", "malformed row"),
        ("1\t2\t6\t881250949", "outside the scale"),
    ],
)
def test_ml100k_malformed_rows_name_file_and_line(
    data_dir: Path, tmp_path: Path, line: str, needle: str
) -> None:
    root = small_ml100k(
        tmp_path, data_dir, ["196\t242\t3\t881250949", "186\t302\t3\t891717742", line]
    )
    with pytest.raises(DataError, match=rf"u\.data:3: .*{needle}"):
        load_movielens("ml-100k", root)


@pytest.mark.parametrize(
    ("line", "needle"),
    [("1,2,abc,1000", "malformed row"), ("1,2", "malformed row"), ("1,2,5.5,1000", "outside")],
)
def test_csv_malformed_rows_name_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    root = write_csv_family(tmp_path / "ml-25m", ["1,1,3.5,1000", "1,2,4.0,1001", line])
    with pytest.raises(DataError, match=rf"ratings\.csv:4: .*{needle}"):
        load_movielens("ml-25m", root)


def test_ml1m_malformed_row(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    for name in ML1M_REAL[:2]:
        (root / name).symlink_to(data_dir / "ml-1m" / name)
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: malformed row: '1::661::3'"):
        load_movielens("ml-1m", tmp_path)


def test_missing_file_says_what_to_run(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"melu data download ml-25m"):
        load_movielens("ml-25m", tmp_path)
    shutil.copytree(data_dir / "ml-100k", tmp_path / "ml-100k")
    (tmp_path / "ml-100k" / "u.item").unlink()
    with pytest.raises(DataError, match=r"missing data file .*u\.item.*melu data download ml-100k"):
        load_movielens("ml-100k", tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_movielens("ml-5m", tmp_path)


def _ml100k_with(tmp_path: Path, data_dir: Path, name: str, edit: object) -> Path:
    """Real ml-100k files with ``name`` rewritten by ``edit(lines) -> lines``."""
    root = tmp_path / "ml-100k"
    root.mkdir()
    for f in ("u.data", "u.user", "u.item"):
        text = (data_dir / "ml-100k" / f).read_text(encoding="latin-1")
        lines = text.splitlines()
        if f == name:
            lines = edit(lines)  # type: ignore[operator]
        (root / f).write_text("\n".join(lines) + "\n", encoding="latin-1")
    return tmp_path


HOSTILE_FILES = [
    ("u.item", lambda ls: [*ls[:5], ls[4], *ls[5:]], r"u.item:6: item_id 5 appears twice"),
    ("u.user", lambda ls: [*ls[:3], ls[2], *ls[3:]], r"u.user:4: user_id 3 appears twice"),
    (
        "u.data",
        lambda ls: ["3000000000\t1\t5\t881250949", *ls[1:]],
        r"u.data:1: user_id 3000000000 is outside 0..2147483647",
    ),
    ("u.data", lambda ls: [*ls[:1], "196\t3000000000\t3\t881250949", *ls[2:]], r"u.data:2:"),
    ("u.data", lambda ls: [*ls[:2], "196\t242\t3\t" + "9" * 20, *ls[3:]], r"u.data:3: malformed"),
    ("u.data", lambda ls: [*ls[:2], "196\t242\t3\t" + "9" * 5_000_000, *ls[3:]], r"u.data:3:"),
    ("u.data", lambda ls: [*ls[:3], "196\t242\tnan\t881250949", *ls[4:]], r"u.data:4: malformed"),
    ("u.item", lambda ls: [ls[0].replace("|0|0|1|1|1|", "|0|0|2|1|1|"), *ls[1:]], r"u.item:1: "),
    ("u.user", lambda ls: [ls[0].replace("|24|", "|-24|"), *ls[1:]], r"u.user:1: age -24"),
]


@pytest.mark.parametrize(("name", "edit", "message"), HOSTILE_FILES)
def test_hostile_data_files_get_a_one_line_error_with_file_and_line(
    data_dir: Path, tmp_path: Path, name: str, edit: object, message: str
) -> None:
    folder = _ml100k_with(tmp_path, data_dir, name, edit)
    with pytest.raises(DataError, match=message) as info:
        load_movielens("ml-100k", folder)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_a_latin1_format_saved_as_utf8_keeps_its_accents(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    for name in ("u.data", "u.user", "u.item"):
        text = (data_dir / "ml-100k" / name).read_text(encoding="latin-1")
        (root / name).write_text(text, encoding="utf-8")  # re-saved by some tool as UTF-8
    data = load_movielens("ml-100k", tmp_path)
    assert data.items.loc[data.items["item_id"] == 543, "title"].item() == "Misérables, Les (1995)"
