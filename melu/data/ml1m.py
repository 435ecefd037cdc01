"""The ml-1m reader: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``, latin-1),
plus MeLU's ``movies_extrainfos.dat`` (MPAA rate, directors, actors) where present.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from melu.data.frames import MovieLens, check_ids, clean, require, year_from_title
from melu.data.parsing import SEP, check_ratings, check_values, read_table, read_text, split_list


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
    files = [require(root / f, "ml-1m") for f in ("ratings.dat", "users.dat", "movies.dat")]
    ratings = _read_dat(
        files[0],
        ["user_id", "item_id", "rating", "timestamp"],
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"},
    )
    check_ratings(ratings, files[0], 1, 5, 1.0)
    check_ids(ratings, files[0], ("user_id", "item_id"))
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
            "year": year_from_title(raw["title"]),
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
    return clean("ml-1m", ratings, users, items, 1.0, files)
