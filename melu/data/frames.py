"""The canonical MovieLens frames and their cleaning, shared by every format's reader.

``MovieLens`` holds ``ratings(user_id, item_id, rating, timestamp)``, ``users(user_id[,
gender, age, occupation, zip])`` and ``items(item_id, title, year, released, genres[, rate,
directors, actors])`` (DESIGN.md). ``clean`` makes a reader's raw frames canonical, counting
what it drops in ``MovieLens.dropped``: duplicate (user, item) rows keep the latest rating;
ratings of unknown items (and users, where there is a user file) are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melu.data.parsing import check_values
from melu.errors import DataError

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


def require(path: Path, name: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"missing data file {path}; run `melu data download {name} --data-dir "
            f"{path.parent.parent}` or point --data-dir / MELU_DATA_DIR at a folder holding {name}/"
        )
    return path


def year_from_title(titles: pd.Series) -> pd.Series:
    return titles.str.extract(_YEAR_IN_TITLE, expand=False).astype("Int16")


def check_ids(frame: pd.DataFrame, path: Path, columns: tuple[str, ...], header: int = 0) -> None:
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


def clean(
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
        where = ", ".join(map(str, files))
        raise DataError(f"{name}: no ratings left after cleaning ({dropped}) in {where}")
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
