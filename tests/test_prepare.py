"""The task cache: determinism, reuse, invalidation, memory-mapped loading, CSV family."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from melu.config import DataConfig
from melu.errors import DataError
from melu.prepare import Prepared, load_prepared, prepare


def cache_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def copy_ml100k(data_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data" / "ml-100k"
    root.mkdir(parents=True)
    for name in ("u.user", "u.item"):
        (root / name).symlink_to(data_dir / "ml-100k" / name)
    shutil.copyfile(data_dir / "ml-100k" / "u.data", root / "u.data")
    return root.parent


def test_two_builds_are_byte_identical(ml100k: Prepared, data_dir: Path, tmp_path: Path) -> None:
    again = prepare(DataConfig(), data_dir, tmp_path, rebuild=True)
    assert ml100k.path is not None and again.path is not None
    first, second = cache_bytes(ml100k.path), cache_bytes(again.path)
    assert len(first) > 40 and first == second
    assert again.fingerprint == ml100k.fingerprint


def test_cache_is_reused_and_keyed_by_config_and_data(data_dir: Path, tmp_path: Path) -> None:
    root = copy_ml100k(data_dir, tmp_path)
    messages: list[str] = []
    built = prepare(DataConfig(), root, tmp_path / "cache", progress=messages.append)
    assert any("building" in m for m in messages)
    messages.clear()
    reused = prepare(DataConfig(), root, tmp_path / "cache", progress=messages.append)
    assert reused.path == built.path and any("using cached" in m for m in messages)
    assert not any("reading" in m for m in messages)  # the key needs no parse of the data
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            built.tasks["warm"].arrays().values(),
            reused.tasks["warm"].arrays().values(),
            strict=True,
        )
    )
    other = prepare(DataConfig(seed=1), root, tmp_path / "cache")
    assert other.path != built.path
    with open(root / "ml-100k" / "u.data", "a") as f:
        f.write("1\t1682\t3\t881250949\n")  # one more rating
    changed = prepare(DataConfig(), root, tmp_path / "cache")
    assert changed.path not in (built.path, other.path)
    assert changed.stats["ratings"] == 100_001
    assert len(list((tmp_path / "cache").iterdir())) == 3  # no temp folders left


@pytest.mark.filterwarnings("error")
def test_mmap_load_matches_and_warns_nothing(ml100k: Prepared) -> None:
    assert ml100k.path is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapped = load_prepared(ml100k.path, mmap=True)
    for name, tasks in ml100k.tasks.items():
        for key, value in tasks.arrays().items():
            assert torch.equal(value, getattr(mapped.tasks[name], key)), (name, key)
    mapped.tasks["warm"].support_ratings[0, 0] = 99.0  # copy-on-write: the file is untouched
    assert load_prepared(ml100k.path).tasks["warm"].support_ratings[0, 0] != 99.0
    assert mapped.features == ml100k.features
    assert mapped.catalog.equals(ml100k.catalog)


def test_broken_cache_is_a_data_error(ml100k: Prepared, tmp_path: Path) -> None:
    assert ml100k.path is not None
    broken = tmp_path / "broken"
    shutil.copytree(ml100k.path, broken)
    (broken / "tasks" / "warm" / "query_items.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"query_items\.npy"):
        load_prepared(broken)
    with pytest.raises(DataError, match="not a melu task cache"):
        load_prepared(tmp_path / "nothing")


def test_csv_family_without_demographics(tmp_path: Path) -> None:
    """A generated half-star data set: item features only, all scenarios built."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ml-latest-small"
    root.mkdir()
    n_items = 300
    years = np.sort(rng.integers(1950, 2020, n_items))
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(f"{i + 1},Film {i + 1} ({years[i]}),Drama|Comedy\n" for i in range(n_items))
    )
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, 201):
        items = rng.choice(n_items, size=rng.integers(15, 60), replace=False) + 1
        for k, item in enumerate(items):
            lines.append(f"{user},{item},{rng.integers(1, 11) / 2},{1000 * user + k}")
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    prepared = prepare(DataConfig(dataset="ml-latest-small"), tmp_path, tmp_path / "cache")
    assert prepared.features.user_fields == ()
    assert prepared.features.rating_scale == (0.5, 5.0) and prepared.features.rating_step == 0.5
    assert {f.name for f in prepared.features.item_fields} == {"item", "decade", "genres"}
    assert all(len(prepared.tasks[name]) > 0 for name in ("train", "warm", "user_cold"))
    ratings = prepared.tasks["warm"].query_ratings[prepared.tasks["warm"].query_mask]
    assert ((ratings * 2) % 1 == 0).all() and (ratings * 2 % 2 == 1).any()
