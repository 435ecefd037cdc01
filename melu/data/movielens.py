"""MovieLens data sets by name: where their files are and which reader loads them.

``source_files`` / ``load_source`` take a ``DataConfig``: its MovieLens data set, or your
own files (``dataset="own"``, read by ``melu.data.own``).

``load_movielens(name, data_dir)`` picks the format's reader (``melu.data.ml100k``,
``melu.data.ml1m``, ``melu.data.csv_family``) and returns the canonical frames of
``melu.data.frames``. Each reader handles its format's separator and encoding (ml-100k and
ml-1m are latin-1) and fails with ``file:line`` and the offending text on a malformed row.
Ratings outside the format's documented scale are an error, never silently dropped.
"""

from __future__ import annotations

import typing
from pathlib import Path

from melu.config import DataConfig, MovieLensName
from melu.data.csv_family import read_csv_family
from melu.data.frames import MovieLens as MovieLens  # re-exported: the type readers return
from melu.data.frames import require
from melu.data.ml1m import read_ml1m
from melu.data.ml100k import read_ml100k
from melu.data.own import own_files, read_own
from melu.errors import DataError

DATASETS: tuple[str, ...] = typing.get_args(MovieLensName)  # declared once, in melu.config


def dataset_dir(name: str, data_dir: Path) -> Path:
    """The folder of data set ``name`` under ``data_dir`` (``data_dir/name``)."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return Path(data_dir) / name


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
    files = [require(root / f, name) for f in names]
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


def source_files(config: DataConfig, data_dir: Path | str) -> list[Path]:
    """The files ``config`` reads: a MovieLens data set's, or your own (``--ratings``)."""
    if config.dataset == "own":
        return own_files(config)
    return dataset_files(config.dataset, data_dir, extra_info=config.use_extra_item_info)


def load_source(config: DataConfig, data_dir: Path | str) -> MovieLens:
    """The canonical frames of ``config``'s data: MovieLens by name, or your own files."""
    if config.dataset == "own":
        return read_own(config)
    return load_movielens(config.dataset, data_dir, extra_info=config.use_extra_item_info)
