"""The data protocol's configuration: ``DataConfig``, the ``data`` section of ``Config``.

Which data set (MovieLens, or your own files), how users split into training, validation
and cold test users (by time, at random, or K folds), which items count as new, and what a
task's support and query are (DESIGN.md, Scenarios). Declared as every section is
(``melu.config_fields``); ``melu.config`` gathers the sections and re-exports this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from melu.config_fields import _Config, setting

MovieLensName = Literal["ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-25m", "ml-32m"]
Dataset = Literal[MovieLensName, "own"]  # own: your files (DataConfig.ratings/items/users)
OWN_FILES = ("ratings", "items", "users")
ItemStats = Literal["tasks", "all"]
UserSplit = Literal["time", "random"]
QueryOrder = Literal["random", "time"]


@dataclass(frozen=True)
class DataConfig(_Config):
    """The task protocol (DESIGN.md, Scenarios). Defaults follow MeLU on MovieLens."""

    SECTION: ClassVar[str] = "data"

    dataset: Dataset = setting("ml-100k", "MovieLens data set (own: set by --ratings).")
    ratings: str | None = setting(
        None,
        "Your own ratings instead of MovieLens: a CSV or Parquet file with the columns "
        "user,item,rating[,timestamp] (README, 'Your own data'). Implies --dataset own.",
    )
    items: str | None = setting(
        None, "With --ratings: an items file, item[,title][,genres][,year] (genres a|b|c)."
    )
    users: str | None = setting(
        None, "With --ratings: a users file, user[,gender][,age][,occupation][,zip]."
    )
    new_item_fraction: float = setting(0.2, "Newest share of items (by release date) that are new.")
    user_split: UserSplit = setting(
        "time", "time: order users by first rating; random: seeded shuffle."
    )
    train_fraction: float = setting(0.7, "Share of users that train (the oldest).")
    validation_fraction: float = setting(
        0.1, "Share of users that validate (the next); the rest are the cold test users."
    )
    min_ratings: int = setting(13, "Fewest ratings in a scenario's items to form a task.")
    max_ratings: int = setting(100, "Most ratings in a scenario's items to form a task.")
    query_size: int = setting(10, "Query ratings per task.")
    max_support: int = setting(90, "Support cap per task.")
    min_support: int = setting(3, "Fewest support ratings of a task.")
    query_order: QueryOrder = setting(
        "random", "random: a seeded query of each user; time: each user's last ratings."
    )
    zip_prefix: int = setting(2, "Zip code digits kept as a feature (0 drops the field).")
    item_id_feature: bool = setting(
        True, "Embed item ids (new items are 'unknown'), for items with enough training ratings."
    )
    item_id_min_ratings: int = setting(
        5, "Training ratings an item needs for its own id embedding."
    )
    item_stats: ItemStats = setting(
        "all",
        "Where item vocabularies, id embeddings and popularity come from: the meta-training "
        "tasks' rows (tasks, MeLU) or all training users' ratings (all; never the warm "
        "queries or evaluation users).",
    )
    use_extra_item_info: bool = setting(
        True, "ml-1m: MPAA rate, directors and actors from MeLU's movies_extrainfos.dat."
    )
    seed: int = setting(0, "Seed of the data protocol: random user split and query.")
    folds: int = setting(
        0, "K > 1: K-fold over users (random split); the test users are fold `fold`."
    )
    fold: int = setting(0, "Which fold's users are the test users (0..folds-1).")

    def _validate(self) -> None:
        need = self._require
        self._own_files()
        need(0.0 <= self.new_item_fraction < 1.0, "new_item_fraction", "must be in [0, 1)")
        need(0 < self.train_fraction < 1, "train_fraction", "must be in (0, 1)")
        need(0 <= self.validation_fraction < 1, "validation_fraction", "must be in [0, 1)")
        need(
            self.train_fraction + self.validation_fraction < 1,
            "validation_fraction",
            "must leave some test users (train_fraction + validation_fraction < 1)",
        )
        need(self.query_size >= 1, "query_size", "must be >= 1")
        need(self.min_support >= 1, "min_support", "must be >= 1")
        need(self.max_support >= self.min_support, "max_support", "must be >= min_support")
        need(
            self.min_ratings >= self.query_size + self.min_support,
            "min_ratings",
            "must be >= query_size + min_support",
        )
        need(self.max_ratings >= self.min_ratings, "max_ratings", "must be >= min_ratings")
        need(0 <= self.zip_prefix <= 5, "zip_prefix", "must be in 0..5")
        need(self.item_id_min_ratings >= 1, "item_id_min_ratings", "must be >= 1")
        need(self.folds == 0 or self.folds >= 2, "folds", "must be 0 (no folds) or >= 2")
        need(self.folds == 0 or 0 <= self.fold < self.folds, "fold", "must be in 0..folds-1")
        need(
            self.folds == 0 or self.user_split == "random",
            "folds",
            "needs user_split='random' (folds shuffle the users)",
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; unset own-data files are left out, so a MovieLens
        protocol's dict (and the task cache key and data fingerprint hashed from it) is
        what it was before own data existed."""
        return {k: v for k, v in super().to_dict().items() if k not in OWN_FILES or v is not None}

    def _own_files(self) -> None:
        """A ratings file makes the data set "own"; its paths are kept absolute, so a
        bundle's config names the files whatever folder ``melu evaluate`` runs in."""
        for name in OWN_FILES:
            value = getattr(self, name)
            self._require(value != "", name, "must be a file path (got an empty string)")
            if value is not None:
                object.__setattr__(self, name, os.path.abspath(value))  # frozen: set once here
        if self.ratings is not None:
            object.__setattr__(self, "dataset", "own")
        self._require(
            self.dataset != "own" or self.ratings is not None,
            "dataset",
            "own needs a ratings file (--ratings FILE)",
        )
        for name in ("items", "users"):
            self._require(
                getattr(self, name) is None or self.ratings is not None,
                name,
                "needs a ratings file too (--ratings FILE)",
            )
