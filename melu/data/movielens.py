"""Readers for MovieLens into the canonical frames of DESIGN.md.

``ratings(user_id, item_id, rating, timestamp)``, ``users(user_id[, gender, age, occupation,
zip])`` and ``items(item_id, title, year, released, genres[, rate, directors, actors])``.
Each reader handles its format's separator and encoding (ml-100k and ml-1m are latin-1) and
fails with ``file:line`` and the offending text on a malformed row.

Cleaning is explicit and counted in ``MovieLens.dropped``: duplicate (user, item) rows keep
the latest rating; ratings of items missing from the item file are dropped. Ratings outside
the format's documented scale are an error, never silently dropped.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melu.config import Dataset
from melu.data.parsing import (
    SEP,
    check_ratings,
    check_values,
    line_error,
    read_table,
    read_text,
    split_list,
)
from melu.errors import DataError
from melu.features import age_buckets

DATASETS: tuple[str, ...] = typing.get_args(Dataset)  # declared once, in melu.config
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


@dataclass
class MovieLens:
    """One MovieLens data set as canonical frames.

    ``rating_scale`` is the observed (min, max) rating; ``rating_step`` the format's
    granularity (1.0 for whole stars, 0.5 for half stars).
    """

    name: str
    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    rating_scale: tuple[float, float]
    rating_step: float
    files: list[Path] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def user_fields(self) -> list[str]:
        return [c for c in ("gender", "age", "occupation", "zip") if c in self.users.columns]


def dataset_dir(name: str, data_dir: Path) -> Path:
    """The folder of data set ``name`` under ``data_dir`` (``data_dir/name``)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return Path(data_dir) / name


def _require(path: Path, name: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"missing data file {path}; run `melu data download {name} --data-dir "
            f"{path.parent.parent}` or point --data-dir / MELU_DATA_DIR at a folder holding {name}/"
        )
    return path


def _year_from_title(titles: pd.Series) -> pd.Series:
    return titles.str.extract(_YEAR_IN_TITLE, expand=False).astype("Int16")


def _check_ids(frame: pd.DataFrame, path: Path, columns: tuple[str, ...], header: int = 0) -> None:
    for column in columns:
        check_values(frame, path, column, header=header)


def _latest_per_pair(ratings: pd.DataFrame) -> np.ndarray:
    """Row positions sorted by (user, item), one per pair: the latest (then last in file).

    One stable int64 argsort in the usual case (no duplicates); the timestamp tie-break
    sort runs only when duplicates exist.
    """
    users = ratings["user_id"].to_numpy(dtype=np.int64)
    items = ratings["item_id"].to_numpy(dtype=np.int64)
    if len(items) and (items.min() < 0 or users.min() < 0):
        raise DataError(
            f"negative user or item id in the ratings (e.g. {users.min()}, {items.min()})"
        )
    key = users * (int(items.max(initial=0)) + 1) + items
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if not (sorted_key[1:] == sorted_key[:-1]).any():
        return order
    stamps = ratings["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(key)), stamps, key))
    sorted_key = key[order]
    last = np.ones(len(key), dtype=bool)
    last[:-1] = sorted_key[1:] != sorted_key[:-1]
    return order[last]


def _clean(
    name: str,
    ratings: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    step: float,
    files: list[Path],
) -> MovieLens:
    dropped: dict[str, int] = {}
    before = len(ratings)
    ratings = ratings.take(_latest_per_pair(ratings))
    dropped["duplicate_ratings"] = before - len(ratings)
    known = ratings["item_id"].isin(items["item_id"])
    dropped["ratings_of_unknown_items"] = int((~known).sum())
    ratings = ratings[known]
    if len(users.columns) > 1:
        known_users = ratings["user_id"].isin(users["user_id"])
        dropped["ratings_of_unknown_users"] = int((~known_users).sum())
        ratings = ratings[known_users]
    else:
        users = pd.DataFrame({"user_id": np.sort(ratings["user_id"].unique())})
    if ratings.empty:
        raise DataError(f"{name}: no ratings left after cleaning ({dropped})")
    ratings = ratings.astype(
        {"user_id": "int32", "item_id": "int32", "rating": "float32", "timestamp": "int64"}
    ).reset_index(drop=True)
    scale = (float(ratings["rating"].min()), float(ratings["rating"].max()))
    return MovieLens(
        name,
        ratings,
        users.reset_index(drop=True),
        items.reset_index(drop=True),
        scale,
        step,
        files,
        dropped,
    )


def read_ml100k(root: Path) -> MovieLens:
    """ml-100k: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1)."""
    files = [_require(root / f, "ml-100k") for f in ("u.data", "u.user", "u.item")]
    ratings = read_table(
        files[0],
        read_text(files[0], "latin-1"),
        "\t",
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(ratings, files[0], 1, 5, 1.0)
    _check_ids(ratings, files[0], ("user_id", "item_id"))
    users = read_table(
        files[1],
        read_text(files[1], "latin-1"),
        "|",
        ["user_id", "age", "gender", "occupation", "zip"],
        {"user_id": "int64", "age": "int64"},
    )
    check_values(users, files[1], "user_id", unique=True)
    check_values(users, files[1], "age", high=150)
    users["age"] = pd.Series(age_buckets(users["age"].to_numpy()), index=users.index).astype(str)
    users = users[["user_id", "gender", "age", "occupation", "zip"]].astype({"user_id": "int32"})
    item_names = ["item_id", "title", "release_date", "video_date", "url", *ML100K_GENRES]
    raw = read_table(
        files[2],
        read_text(files[2], "latin-1"),
        "|",
        item_names,
        {"item_id": "int64", **{g: "int8" for g in ML100K_GENRES}},
    )
    check_values(raw, files[2], "item_id", unique=True)
    for genre in ML100K_GENRES:
        check_values(raw, files[2], genre, high=1)
    flags = raw[list(ML100K_GENRES)].to_numpy().astype(bool)
    names = np.array(ML100K_GENRES, dtype=object)
    released = pd.to_datetime(raw["release_date"], format="%d-%b-%Y", errors="coerce")
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"].astype("int32"),
            "title": raw["title"],
            "year": released.dt.year.astype("Int16").fillna(_year_from_title(raw["title"])),
            "released": released,
            "genres": [list(names[row]) for row in flags],
        }
    )
    return _clean("ml-100k", ratings, users, items, 1.0, files)


def _read_dat(path: Path, names: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    text = read_text(path, "latin-1").replace("::", SEP)
    return read_table(path, text, SEP, names, dtypes)


def _read_melu_extra(path: Path) -> pd.DataFrame:
    """MeLU's ``movies_extrainfos.dat`` (UTF-8, CRLF, 11 ``::`` fields) → rate/directors/actors."""
    text = read_text(path, "utf-8").replace("\r\n", "\n").replace("::", SEP)
    names = [
        "item_id",
        "title",
        "year",
        "rate",
        "released",
        "genre",
        "director",
        "writer",
        "actors",
        "plot",
        "poster",
    ]
    raw = read_table(path, text, SEP, names, {"item_id": "int64"})
    check_values(raw, path, "item_id", unique=True)
    return pd.DataFrame(
        {
            "item_id": raw["item_id"].astype("int32"),
            "rate": raw["rate"].replace("N/A", ""),
            "directors": split_list(raw["director"], ","),
            "actors": split_list(raw["actors"], ","),
        }
    )


def read_ml1m(root: Path, *, extra_info: bool = True) -> MovieLens:
    """ml-1m: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1).

    With ``extra_info`` and MeLU's ``movies_extrainfos.dat`` present, items also get the
    MPAA ``rate``, ``directors`` and ``actors``.
    """
    files = [_require(root / f, "ml-1m") for f in ("ratings.dat", "users.dat", "movies.dat")]
    ratings = _read_dat(
        files[0],
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(ratings, files[0], 1, 5, 1.0)
    _check_ids(ratings, files[0], ("user_id", "item_id"))
    users = _read_dat(
        files[1], ["user_id", "gender", "age", "occupation", "zip"], {"user_id": "int64"}
    )
    check_values(users, files[1], "user_id", unique=True)
    users = users.astype({"user_id": "int32"})
    raw = _read_dat(files[2], ["item_id", "title", "genres"], {"item_id": "int64"})
    check_values(raw, files[2], "item_id", unique=True)
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"].astype("int32"),
            "title": raw["title"],
            "year": _year_from_title(raw["title"]),
            "released": pd.NaT,
            "genres": split_list(raw["genres"], "|"),
        }
    )
    extra = root / "movies_extrainfos.dat"
    if extra_info and extra.is_file():
        files.append(extra)
        info = _read_melu_extra(extra)
        items = items.merge(info, on="item_id", how="left")
        items["rate"] = items["rate"].fillna("")
        for col in ("directors", "actors"):
            items[col] = [v if isinstance(v, list) else [] for v in items[col]]
    return _clean("ml-1m", ratings, users, items, 1.0, files)


def _read_csv_ratings(path: Path, chunksize: int = 5_000_000) -> pd.DataFrame:
    """``ratings.csv`` in chunks with compact dtypes (bounded peak memory at 25M+ rows)."""
    dtypes = {"userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
    try:
        with pd.read_csv(path, dtype=dtypes, chunksize=chunksize, engine="c") as reader:
            chunks = list(reader)
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        text = read_text(path, "utf-8")
        raise line_error(path, text, list(dtypes.values())) from exc
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(dtypes))
    if list(frame.columns) != list(dtypes):
        raise DataError(
            f"{path}:1: expected header userId,movieId,rating,timestamp, "
            f"got {','.join(map(str, frame.columns))}"
        )
    if frame.isna().any().any():
        raise line_error(path, read_text(path, "utf-8"), list(dtypes.values()))
    return frame.rename(columns={"userId": "user_id", "movieId": "item_id"})


def read_csv_family(root: Path, name: str) -> MovieLens:
    """ml-latest-small, ml-latest, ml-25m, ml-32m: ``ratings.csv`` + ``movies.csv``.

    Half-star ratings (0.5..5); no user demographics, so ``users`` has only ``user_id``.
    """
    files = [_require(root / f, name) for f in ("ratings.csv", "movies.csv")]
    ratings = _read_csv_ratings(files[0])
    check_ratings(ratings, files[0], 0.5, 5, 0.5, header=1)
    _check_ids(ratings, files[0], ("user_id", "item_id"), header=1)
    try:
        raw = pd.read_csv(
            files[1], dtype={"movieId": "int32", "title": str, "genres": str}, keep_default_na=False
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{files[1]}: malformed movies file ({exc})") from exc
    if list(raw.columns) != ["movieId", "title", "genres"]:
        raise DataError(f"{files[1]}:1: expected header movieId,title,genres")
    check_values(raw, files[1], "movieId", unique=True, header=1)
    genres = raw["genres"].replace("(no genres listed)", "")
    items = pd.DataFrame(
        {
            "item_id": raw["movieId"],
            "title": raw["title"].str.strip(),
            "year": _year_from_title(raw["title"].str.strip()),
            "released": pd.NaT,
            "genres": split_list(genres, "|"),
        }
    )
    users = pd.DataFrame({"user_id": pd.Series([], dtype="int32")})
    return _clean(name, ratings, users, items, 0.5, files)


def _root(name: str, data_dir: Path | str) -> Path:
    root = dataset_dir(name, Path(data_dir))
    if not root.is_dir():
        raise DataError(
            f"data set {name} not found in {root}; run `melu data download {name} "
            f"--data-dir {data_dir}` (or set --data-dir / MELU_DATA_DIR)"
        )
    return root


def dataset_files(name: str, data_dir: Path | str, *, extra_info: bool = True) -> list[Path]:
    """The files ``load_movielens`` reads for ``name`` (what the task cache is keyed on).

    Raises ``DataError`` naming the missing file and the download command.
    """
    root = _root(name, data_dir)
    if name == "ml-100k":
        names = ["u.data", "u.user", "u.item"]
    elif name == "ml-1m":
        names = ["ratings.dat", "users.dat", "movies.dat"]
    else:
        names = ["ratings.csv", "movies.csv"]
    files = [_require(root / f, name) for f in names]
    if name == "ml-1m" and extra_info and (root / "movies_extrainfos.dat").is_file():
        files.append(root / "movies_extrainfos.dat")
    return files


def load_movielens(name: str, data_dir: Path | str, *, extra_info: bool = True) -> MovieLens:
    """Read data set ``name`` from ``data_dir/name`` into canonical frames."""
    root = _root(name, data_dir)
    if name == "ml-100k":
        return read_ml100k(root)
    if name == "ml-1m":
        return read_ml1m(root, extra_info=extra_info)
    return read_csv_family(root, name)
