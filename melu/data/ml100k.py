"""The ml-100k reader: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1).

Raw ages are bucketed with ``melu.data.ages.age_buckets`` (MovieLens' ml-1m codes), so both
demographic data sets share one age vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melu.data.ages import age_buckets
from melu.data.frames import MovieLens, check_ids, clean, require, year_from_title
from melu.data.parsing import check_ratings, check_values, read_table, read_text

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


def read_ml100k(root: Path) -> MovieLens:
    """ml-100k: ``u.data`` (tab), ``u.user`` and ``u.item`` (``|``, latin-1)."""
    files = [require(root / f, "ml-100k") for f in ("u.data", "u.user", "u.item")]
    ratings = read_table(
        files[0],
        read_text(files[0], "latin-1"),
        "\t",
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(ratings, files[0], 1, 5, 1.0)
    check_ids(ratings, files[0], ("user_id", "item_id"))
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
            "year": released.dt.year.astype("Int16").fillna(year_from_title(raw["title"])),
            "released": released,
            "genres": [list(names[row]) for row in flags],
        }
    )
    return clean("ml-100k", ratings, users, items, 1.0, files)
