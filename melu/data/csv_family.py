"""The CSV-family reader (ml-latest-small, ml-latest, ml-25m, ml-32m): ``ratings.csv`` in
chunks with compact dtypes, ``movies.csv``; half-star ratings, no user demographics.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from melu.data.frames import MovieLens, check_ids, clean, require, year_from_title
from melu.data.parsing import check_ratings, check_values, line_error, read_text, split_list
from melu.errors import DataError


def _read_csv_ratings(path: Path, chunksize: int = 5_000_000) -> pd.DataFrame:
    """``ratings.csv`` in chunks with compact dtypes (bounded peak memory at 25M+ rows)."""
    dtypes = {"userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no rows)")
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
    if frame.empty:
        raise DataError(f"{path}: no ratings (only a header)")
    if frame.isna().any().any():
        raise line_error(path, read_text(path, "utf-8"), list(dtypes.values()))
    return frame.rename(columns={"userId": "user_id", "movieId": "item_id"})


def read_csv_family(root: Path, name: str) -> MovieLens:
    """ml-latest-small, ml-latest, ml-25m, ml-32m: ``ratings.csv`` + ``movies.csv``.

    Half-star ratings (0.5..5); no user demographics, so ``users`` has only ``user_id``.
    """
    files = [require(root / f, name) for f in ("ratings.csv", "movies.csv")]
    ratings = _read_csv_ratings(files[0])
    check_ratings(ratings, files[0], 0.5, 5, 0.5, header=1)
    check_ids(ratings, files[0], ("user_id", "item_id"), header=1)
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
            "year": year_from_title(raw["title"].str.strip()),
            "released": pd.NaT,
            "genres": split_list(genres, "|"),
        }
    )
    users = pd.DataFrame({"user_id": pd.Series([], dtype="int32")})
    return clean(name, ratings, users, items, 0.5, files)
