"""From MovieLens files to cached TaskSets: ``prepare(config, data_dir, cache_dir)``.

The cache folder is keyed by a hash of the data files' contents and the ``DataConfig``; a
change in either builds a new one. It is written to a temporary folder and renamed, so an
interrupted run never leaves a half-written cache. Formats are safe: JSON, ``.npy``
(``allow_pickle=False``) and Parquet. Same inputs and seed → byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import __version__
from melu.atomic import atomic_directory, recover
from melu.config import DataConfig
from melu.data.movielens import MovieLens, dataset_files, load_movielens
from melu.errors import DataError
from melu.features import FeatureSpace, FeatureTables
from melu.tasks import (
    SCENARIOS,
    TaskSet,
    build_scenarios,
    load_taskset,
    new_item_mask,
    save_taskset,
    scenario_stats,
    split_users,
)

CACHE_VERSION = 4  # 3: ``train_ratings`` (all training ratings); 4: ``user_ratings`` of
# the validation and test users (the top-N protocol), in ``ratings/``
Progress = Callable[[str], None]
RATING_ARRAYS = ("user_rows", "item_rows", "ratings")
EVAL_ROLES = ("validation", "test")  # whose every rating ``Prepared.user_ratings`` keeps


@dataclass
class RatingRows:
    """Flat rated pairs: ``user_rows`` (N,) int rows into ``FeatureTables.users``,
    ``item_rows`` (N,) int rows into ``FeatureTables.items``, ``ratings`` (N,) float."""

    user_rows: torch.Tensor
    item_rows: torch.Tensor
    ratings: torch.Tensor

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


@dataclass
class Prepared:
    """Everything training, evaluation and serving need from the data.

    ``train_ratings``: *all training ratings*, every rating by a training user on an
    existing item, heavy (> ``max_ratings``) and light (< ``min_ratings``) raters
    included, except the warm scenario's held-out query ratings; never a validation or
    test user's rating, never a new item's. What a model or baseline may fit on beyond
    the meta-training tasks (which hold only 13..100-rating users' rows).

    ``user_ratings``: role (``validation``, ``test``) → every rating of that role's users,
    existing and new items, sorted by user then item: what the full-catalog top-N protocol
    (``melu.evaluation.topn``) draws supports and held-out items from. Never fit on.
    """

    config: DataConfig
    features: FeatureSpace
    tables: FeatureTables
    tasks: dict[str, TaskSet]
    catalog: pd.DataFrame  # item_id, title, year, genres, is_new, n_ratings, mean_rating
    fingerprint: str
    train_ratings: RatingRows
    stats: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    user_ratings: dict[str, RatingRows] = field(default_factory=dict)


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(files: list[Path], config: DataConfig) -> str:
    """sha256 of the data files' contents, the DataConfig and the cache format version."""
    h = hashlib.sha256(f"melu-cache-v{CACHE_VERSION}".encode())
    for path in sorted(files, key=lambda p: p.name):
        h.update(path.name.encode() + file_digest(path).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def build_catalog(data: MovieLens, train_ratings: pd.DataFrame, is_new: np.ndarray) -> pd.DataFrame:
    """Items with titles and the training popularity (count, mean) used by onboarding."""
    agg = train_ratings.groupby("item_id")["rating"].agg(["size", "mean"])
    catalog = data.items[["item_id", "title", "year", "genres"]].copy()
    catalog["year"] = catalog["year"].astype("Float64").astype("Int32")
    catalog["is_new"] = is_new
    catalog["n_ratings"] = catalog["item_id"].map(agg["size"]).fillna(0).astype("int64")
    catalog["mean_rating"] = catalog["item_id"].map(agg["mean"]).astype("float64")
    return catalog.reset_index(drop=True)


def stats_rows(config: DataConfig, train: TaskSet, all_train: RatingRows) -> RatingRows:
    """The rated rows that vocabularies, id embeddings and popularity are learned from: the
    meta-training tasks' rows (``item_stats="tasks"``) or all training ratings ("all");
    never held-out warm queries or evaluation users."""
    if config.item_stats == "all":
        return all_train
    return RatingRows(*train.rated_rows())


def _frequent_items(train_rows: pd.DataFrame, min_ratings: int) -> np.ndarray:
    """Ids of items with at least ``min_ratings`` training ratings (they get an id embedding)."""
    counts = train_rows["item_id"].value_counts()
    return np.sort(counts.index[counts >= min_ratings].to_numpy())


def all_training_ratings(
    ratings: pd.DataFrame,
    train_users: np.ndarray,
    new_ids: np.ndarray,
    warm: TaskSet,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> RatingRows:
    """Training users' ratings of existing items minus the warm held-out queries (N rows,
    sorted by user then item). ``user_ids`` / ``item_ids``: the feature tables' row ids."""
    rows = ratings[ratings["user_id"].isin(train_users) & ~ratings["item_id"].isin(new_ids)]
    mask = warm.query_mask.bool()
    held = pd.MultiIndex.from_arrays(
        [
            warm.user_ids.long().unsqueeze(1).expand(mask.shape)[mask].numpy(),
            item_ids[warm.query_items.long()[mask].numpy()],
        ]
    )
    keys = pd.MultiIndex.from_arrays([rows["user_id"].to_numpy(), rows["item_id"].to_numpy()])
    return rating_rows(rows[~keys.isin(held)], user_ids, item_ids)


def rating_rows(rows: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> RatingRows:
    """A ratings frame as ``RatingRows`` (sorted by user then item), ids mapped to the
    feature tables' rows (``user_ids`` / ``item_ids``: row i has id ``ids[i]``)."""
    rows = rows.sort_values(["user_id", "item_id"], kind="stable")
    user_row = pd.Series(np.arange(len(user_ids)), index=user_ids)
    item_row = pd.Series(np.arange(len(item_ids)), index=item_ids)
    return RatingRows(
        torch.from_numpy(user_row.loc[rows["user_id"].to_numpy()].to_numpy(dtype=np.int32)),
        torch.from_numpy(item_row.loc[rows["item_id"].to_numpy()].to_numpy(dtype=np.int32)),
        torch.from_numpy(rows["rating"].to_numpy(dtype=np.float32, copy=True)),
    )


def build(data: MovieLens, config: DataConfig) -> Prepared:
    """Split users and items, build the FeatureSpace from training rows, build all tasks."""
    is_new = new_item_mask(data.items, config.new_item_fraction)
    new_ids = data.items["item_id"].to_numpy()[is_new]
    roles = split_users(data.ratings, config)
    ratings = data.ratings
    users = data.users
    if len(users.columns) == 1:  # no demographics: one row per rating user
        users = pd.DataFrame({"user_id": np.sort(ratings["user_id"].unique()).astype(np.int32)})
    user_ids = users["user_id"].to_numpy(dtype=np.int64)
    item_ids = data.items["item_id"].to_numpy(dtype=np.int64)
    tasks = build_scenarios(ratings, roles, new_ids, user_ids, item_ids, config)
    all_train = all_training_ratings(
        ratings, roles["train"], new_ids, tasks["warm"], user_ids, item_ids
    )
    learned = stats_rows(config, tasks["train"], all_train)
    train_rows = pd.DataFrame(
        {"item_id": item_ids[learned.item_rows.numpy()], "rating": learned.ratings.numpy()}
    )
    train_users = np.unique(user_ids[learned.user_rows.numpy()])
    space = FeatureSpace.build(
        users[users["user_id"].isin(train_users)],
        data.items[data.items["item_id"].isin(train_rows["item_id"].unique())],
        data.rating_scale,
        data.rating_step,
        config.zip_prefix,
        item_id=config.item_id_feature,
        id_items=_frequent_items(train_rows, config.item_id_min_ratings),
    )
    tables = FeatureTables.build(space, users, data.items)
    stats = {
        "dataset": data.name,
        "ratings": len(ratings),
        "users": int(ratings["user_id"].nunique()),
        "items": len(data.items),
        "new_items": int(is_new.sum()),
        "roles": {k: len(v) for k, v in roles.items()},
        "dropped": data.dropped,
        "scenarios": {name: scenario_stats(t) for name, t in tasks.items()},
        "train_ratings": len(all_train),
    }
    catalog = build_catalog(data, train_rows, is_new)
    held = {
        role: rating_rows(ratings[ratings["user_id"].isin(roles[role])], user_ids, item_ids)
        for role in EVAL_ROLES
    }
    return Prepared(config, space, tables, tasks, catalog, "", all_train, stats, None, held)


def _save(prepared: Prepared, folder: Path) -> None:
    prepared.features.save(folder / "features.json")
    tables = folder / "tables"
    tables.mkdir()
    np.save(tables / "user_ids.npy", prepared.tables.user_ids.numpy(), allow_pickle=False)
    np.save(tables / "item_ids.npy", prepared.tables.item_ids.numpy(), allow_pickle=False)
    for side in ("users", "items"):
        for name, value in getattr(prepared.tables, side).items():
            np.save(tables / f"{side}.{name}.npy", value.numpy(), allow_pickle=False)
    for name, tasks in prepared.tasks.items():
        save_taskset(tasks, folder / "tasks" / name)
    (folder / "ratings").mkdir()
    sets = {"train": prepared.train_ratings, **prepared.user_ratings}
    for role, rows in sets.items():
        for name in RATING_ARRAYS:
            value = getattr(rows, name).numpy()
            np.save(folder / "ratings" / f"{role}.{name}.npy", value, allow_pickle=False)
    prepared.catalog.to_parquet(folder / "catalog.parquet", index=False)
    manifest = {
        "melu_cache_version": CACHE_VERSION,
        "fingerprint": prepared.fingerprint,
        "config": prepared.config.to_dict(),
        "stats": prepared.stats,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def load_prepared(folder: Path, mmap: bool = False) -> Prepared:
    """Read a cache folder written by ``prepare``.

    ``mmap``: the TaskSets are memory-mapped copy-on-write (see ``melu.tasks.load_taskset``),
    so a 25M-rating cache opens instantly and processes share one copy in the page cache.
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: not a melu task cache ({exc})") from exc
    space = FeatureSpace.load(folder / "features.json")
    tdir = folder / "tables"

    def arr(name: str, where: Path = tdir) -> torch.Tensor:
        try:
            return torch.from_numpy(np.load(where / f"{name}.npy", allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise DataError(f"{where / name}.npy: unreadable task cache ({exc})") from exc

    tables = FeatureTables(
        arr("user_ids"),
        {f.name: arr(f"users.{f.name}") for f in space.user_fields},
        arr("item_ids"),
        {f.name: arr(f"items.{f.name}") for f in space.item_fields},
    )
    tasks = {name: load_taskset(folder / "tasks" / name, mmap) for name in SCENARIOS}
    train_ratings, *held = (
        RatingRows(*(arr(f"{role}.{name}", folder / "ratings") for name in RATING_ARRAYS))
        for role in ("train", *EVAL_ROLES)
    )
    catalog = pd.read_parquet(folder / "catalog.parquet")
    catalog["genres"] = [list(g) for g in catalog["genres"]]  # parquet gives arrays back
    config = DataConfig.from_dict(manifest["config"])
    return Prepared(
        config,
        space,
        tables,
        tasks,
        catalog,
        manifest["fingerprint"],
        train_ratings,
        manifest["stats"],
        folder,
        dict(zip(EVAL_ROLES, held, strict=True)),
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("MELU_CACHE_DIR", ".melu-cache"))


def prepare(
    config: DataConfig,
    data_dir: Path | str,
    cache_dir: Path | str | None = None,
    *,
    rebuild: bool = False,
    progress: Progress | None = None,
    mmap: bool = False,
) -> Prepared:
    """Load the cached TaskSets for ``config``, building (and caching) them if needed.

    ``mmap``: a cache hit is opened memory-mapped (see ``load_prepared``)."""
    say = progress or (lambda _msg: None)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = dataset_files(config.dataset, data_dir, extra_info=config.use_extra_item_info)
    key = cache_key(files, config)
    folder = recover(cache_root / f"{config.dataset}-{key[:16]}")
    if folder.is_dir() and not rebuild:
        say(f"using cached tasks in {folder}")
        return load_prepared(folder, mmap)
    say(f"reading {config.dataset} from {data_dir}")
    data = load_movielens(config.dataset, data_dir, extra_info=config.use_extra_item_info)
    say("building tasks")
    prepared = build(data, config)
    prepared.fingerprint = key
    prepared.stats["melu_version"] = __version__
    with atomic_directory(folder) as tmp:
        _save(prepared, tmp)
    prepared.path = folder
    say(f"cached tasks in {folder}")
    return prepared
