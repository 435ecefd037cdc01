"""Your own data: ``--ratings FILE [--items FILE] [--users FILE]``, CSV or Parquet.

The files become the same canonical frames as a MovieLens data set (``melu.data.frames``),
so everything downstream (tasks, training, evaluation, serving) is unchanged:

- ratings (required): the columns ``user,item,rating[,timestamp]`` (``user_id``/``item_id``
  are accepted too). Ids are whole numbers in 0..2³¹−1, ratings finite, in whole or half
  steps; the scale is the lowest to the highest rating given. Without a timestamp, the
  file's order is the time order (users are split by their first rating).
- items (optional): ``item[,title][,genres][,year]``; genres separated by ``|``; the year
  (empty: unknown) else the title's "(1995)". Without it, items are the rated ids, titled
  by their id. Items without any year are ordered by their first rating, so the new items
  are the ones rated latest.
- users (optional): ``user[,gender][,age][,occupation][,zip]``; ages in years (empty:
  unknown) are bucketed as MovieLens' are. Ratings of users or items missing from a given
  file are dropped and counted, as for MovieLens.

A CSV has a header line and is read as UTF-8; a file ending ``.parquet`` or ``.pq`` is
Parquet. A malformed row is an error naming ``file:line`` (for Parquet, ``file:row``) and
the offending text, through the same strict parsing as the MovieLens readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melu.config import DataConfig
from melu.data.ages import age_buckets
from melu.data.frames import MovieLens, check_ids, clean, year_from_title
from melu.data.parsing import check_ratings, check_values, read_table, read_text, split_list
from melu.errors import DataError

RATINGS = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
ITEMS = {"item": "item_id", "title": "title", "genres": "genres", "year": "year"}
USERS = {"user": "user_id", "gender": "gender", "age": "age", "occupation": "occupation",
         "zip": "zip"}  # fmt: skip
NUMBERS = {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"}


def own_files(config: DataConfig) -> list[Path]:
    """The files ``config`` names (what the task cache is keyed on); a missing one is an
    error naming its flag."""
    files = []
    for name in ("ratings", "items", "users"):
        value = getattr(config, name)
        if value is None:
            continue
        if not Path(value).is_file():
            raise DataError(f"{value}: no such file (--{name})")
        files.append(Path(value))
    return files


def _columns(path: Path, given: list[str], known: dict[str, str]) -> list[str]:
    """The canonical names of a header's columns (``user_id`` for ``user`` or ``user_id``)."""
    aliases = {**known, **{v: v for v in known.values()}}
    names = [aliases.get(name.strip().lower(), "") for name in given]
    for name, canonical in zip(given, names, strict=True):
        if not canonical:
            raise DataError(
                f"{path}:1: unknown column {name!r}; expected {','.join(known)} (see --help)"
            )
    repeated = {n for n in names if names.count(n) > 1}
    if repeated:
        raise DataError(f"{path}:1: column {sorted(repeated)[0]} appears twice")
    first = next(iter(known.values()))
    if first not in names:
        raise DataError(f"{path}:1: no {next(iter(known))} column (header: {','.join(given)})")
    return names


def read_frame(path: Path, known: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """``path`` as a frame with canonical column names, and the lines before its first row
    (1 for a CSV's header, 0 for Parquet) for ``file:line`` errors."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        frame.columns = _columns(path, [str(c) for c in frame.columns], known)
        return _parquet_numbers(path, frame), 0
    text = read_text(path, "utf-8").removeprefix("\ufeff")
    header = text.split("\n", 1)[0].rstrip("\r")
    if not header.strip():
        raise DataError(f"{path}:1: no header line (expected {','.join(known)})")
    names = _columns(path, header.split(","), known)
    dtypes = {n: NUMBERS.get(n, "str") for n in names}
    return read_table(path, text.replace("\r\n", "\n"), ",", names, dtypes, header=True), 1


def _parquet_numbers(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet's numeric columns checked as strictly as a CSV's: every value a finite
    number, whole for ids and timestamps."""
    for name in [n for n in frame.columns if n in NUMBERS]:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if NUMBERS[name] == "int64":
            bad |= np.where(np.isfinite(values), values != np.round(values), True)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = frame[name].iloc[row]
            shown = repr(value.item() if hasattr(value, "item") else value)
            raise DataError(f"{path}:{row + 1}: {name} {shown} is not a {_kind(name)}")
        frame[name] = values.astype(NUMBERS[name])
    return frame


def _kind(name: str) -> str:
    return "whole number" if NUMBERS[name] == "int64" else "finite number"


def _optional_ints(frame: pd.DataFrame, path: Path, column: str, header: int) -> pd.Series:
    """A text or numeric column of whole numbers, empty meaning unknown → ``Int64``."""
    text = frame[column].astype("string").str.strip().fillna("")
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    whole = values.isna() | (values == values.round())
    bad = (text != "") & (values.isna() | ~whole)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}:{row + 1 + header}: {column} {text.iloc[row]!r} is not a whole number"
        )
    return values.astype("Int64")


def read_ratings(path: Path) -> pd.DataFrame:
    """The ratings file as ``user_id, item_id, rating, timestamp`` (checked)."""
    frame, header = read_frame(path, RATINGS)
    for name in ("item_id", "rating"):
        if name not in frame.columns:
            raise DataError(f"{path}:1: no {name.removesuffix('_id')} column")
    if frame.empty:
        raise DataError(f"{path}: no ratings (a header line only)")
    if "timestamp" not in frame.columns:
        frame["timestamp"] = np.arange(len(frame), dtype=np.int64)  # the file's order
    check_ids(frame, path, ("user_id", "item_id"), header=header)
    values = frame["rating"].to_numpy(dtype=np.float64)
    off_step = np.isfinite(values) & (values * 2 != np.round(values * 2))
    if off_step.any():
        row = int(np.flatnonzero(off_step)[0])
        raise DataError(
            f"{path}:{row + 1 + header}: rating {values[row]:g} is not in whole or half steps"
        )
    step = 1.0 if np.all(values == np.round(values)) else 0.5
    check_ratings(frame, path, float(values.min()), float(values.max()), step, header)
    if values.min() == values.max():
        raise DataError(f"{path}: every rating is {values.min():g}; a scale needs two values")
    return frame[["user_id", "item_id", "rating", "timestamp"]]


def read_items(path: Path | None, ratings: pd.DataFrame) -> pd.DataFrame:
    """The items file (or the rated ids) as canonical items."""
    if path is None:
        frame, header = pd.DataFrame({"item_id": np.unique(ratings["item_id"])}), 0
    else:
        frame, header = read_frame(path, ITEMS)
        check_values(frame, path, "item_id", unique=True, header=header)
    ids = frame["item_id"].astype("int32")
    named = "item " + ids.astype(str)
    title = frame["title"].fillna("").astype(str).str.strip() if "title" in frame.columns else named
    title = title.where(title != "", named)
    if "year" in frame.columns and path is not None:
        year = _optional_ints(frame, path, "year", header).astype("Int16")
    else:
        year = year_from_title(title)
    genres = (frame["genres"].fillna("").astype(str) if "genres" in frame.columns
              else pd.Series("", ids.index))  # fmt: skip
    items = pd.DataFrame({"item_id": ids, "title": title, "year": year, "released": pd.NaT,
                          "genres": split_list(genres, "|")})  # fmt: skip
    if year.isna().all():  # no dates at all: an item is as new as its first rating
        first = ratings.groupby("item_id")["timestamp"].min()
        # an ordering key only (never shown): int64 nanoseconds cannot overflow a datetime
        items["released"] = pd.to_datetime(ids.map(first).to_numpy(), unit="ns")
    return items


def read_users(path: Path | None, ratings: pd.DataFrame) -> pd.DataFrame:
    """The users file as canonical users (only ``user_id`` without one)."""
    if path is None:
        return pd.DataFrame({"user_id": pd.Series([], dtype="int32")})
    frame, header = read_frame(path, USERS)
    check_values(frame, path, "user_id", unique=True, header=header)
    if "age" in frame.columns:
        ages = _optional_ints(frame, path, "age", header)
        check_values(pd.DataFrame({"age": ages.fillna(0)}), path, "age", high=150, header=header)
        buckets = age_buckets(ages.fillna(0).to_numpy(dtype=np.int64)).astype(str)
        frame["age"] = np.where(ages.isna().to_numpy(), "", buckets)
    for name in ("gender", "occupation", "zip"):
        if name in frame.columns:
            frame[name] = frame[name].fillna("").astype(str).str.strip()
    frame["user_id"] = frame["user_id"].astype("int32")
    return frame[[c for c in USERS.values() if c in frame.columns]]


def read_own(config: DataConfig) -> MovieLens:
    """The files of ``config`` (``ratings``, optional ``items`` and ``users``) as canonical
    frames, cleaned as a MovieLens data set is (duplicates keep the latest, counted)."""
    files = own_files(config)
    ratings = read_ratings(Path(str(config.ratings)))
    items = read_items(Path(config.items) if config.items else None, ratings)
    users = read_users(Path(config.users) if config.users else None, ratings)
    step = 1.0 if np.all(ratings["rating"] == ratings["rating"].round()) else 0.5
    return clean("own", ratings, users, items, step, files)
