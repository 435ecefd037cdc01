"""Shared fixtures: the real MovieLens folder and prepared ml-100k tasks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from melu.config import DataConfig
from melu.prepare import Prepared, prepare


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny meta-batches gain little from a second thread and lose much on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$MELU_DATA_DIR (CI: ../shared/data); real-data tests skip when it is unset."""
    value = os.environ.get("MELU_DATA_DIR")
    if not value:
        pytest.skip("MELU_DATA_DIR is not set: real MovieLens tests need it (CI sets it)")
    path = Path(value)
    if not (path / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MELU_DATA_DIR={value} holds no ml-100k/u.data")
    return path


@pytest.fixture(scope="session")
def ml100k(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """ml-100k tasks with the default protocol, built once per test session."""
    return prepare(DataConfig(dataset="ml-100k"), data_dir, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def untrained_bundle(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid ML-100K bundle of the default model's initial weights (seed 0), one per
    test module: what the hostile tests damage copies of or feed to the CLI."""
    from melu.bundle import save_bundle
    from melu.config import Config
    from melu.model.estimator import PreferenceEstimator

    torch.manual_seed(0)
    config = Config()
    params = PreferenceEstimator(config.model, ml100k.features).init_params()
    return save_bundle(
        tmp_path_factory.mktemp("run") / "model", config=config, features=ml100k.features,
        params=params, catalog=ml100k.catalog, tables=ml100k.tables,
    )  # fmt: skip
