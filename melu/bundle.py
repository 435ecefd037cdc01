"""The model bundle: everything needed to serve or evaluate a trained model, no pickle.

A directory holding ``weights.safetensors`` (meta-learned parameters, plus ``inner_lr.*``
for Meta-SGD), ``config.json`` (all configs, schema version, package versions, data
fingerprint), ``features.json`` (the FeatureSpace), ``catalog.parquet`` (items: ids,
titles, years, genres, popularity and their encoded feature indices) and ``metrics.json``.
It is written to a temporary sibling folder and renamed, so a killed run never leaves a
half-written bundle; loading checks the schema and every tensor's shape (the checks, one
per file, live in ``melu.bundle_checks``).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from melu import __version__
from melu.atomic import atomic_directory, recover
from melu.bundle_checks import (
    INNER_LR_PREFIX,
    check_catalog,
    check_digests,
    check_metrics,
    check_weights,
    digests_of,
    file_sha256,  # noqa: F401 - re-exported (tests, tools)
    item_tables,
    read_json,
    unreadable,
)
from melu.config import Config
from melu.errors import BundleError, ConfigError
from melu.features import FeatureSpace
from melu.model import ranking
from melu.model.estimator import Params, PreferenceEstimator
from melu.tables import FeatureTables

SCHEMA_VERSION = 1
BUNDLE_FILES = (
    "weights.safetensors",
    "config.json",
    "features.json",
    "catalog.parquet",
    "metrics.json",
)


@dataclass
class Bundle:
    """A loaded model bundle. ``params`` are the meta-learned initial weights."""

    config: Config
    features: FeatureSpace
    model: PreferenceEstimator
    params: Params
    catalog: pd.DataFrame
    item_features: FeatureTables  # item rows in catalog order; no user rows
    inner_lr: Params | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _catalog_with_features(catalog: pd.DataFrame, tables: FeatureTables) -> pd.DataFrame:
    """The catalog in feature-table row order with ``feat.<field>`` columns of indices."""
    order = pd.Series(np.arange(len(catalog)), index=catalog["item_id"].to_numpy())
    rows = order.loc[tables.item_ids.numpy()].to_numpy()
    out = catalog.iloc[rows].reset_index(drop=True).copy()
    for name, value in tables.items.items():
        array = value.numpy()
        out[f"feat.{name}"] = list(array) if array.ndim == 2 else array
    return out


def save_bundle(
    path: Path | str,
    *,
    config: Config,
    features: FeatureSpace,
    params: Params,
    catalog: pd.DataFrame,
    tables: FeatureTables,
    metrics: dict[str, Any] | None = None,
    inner_lr: Params | None = None,
    fingerprint: str = "",
) -> Path:
    """Write a bundle to ``path`` atomically (temp folder + rename); returns ``path``."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
        for k, v in (inner_lr or {}).items():
            tensors[INNER_LR_PREFIX + k] = v.detach().cpu().contiguous()
        save_file(tensors, str(tmp / "weights.safetensors"))
        info = {
            "schema_version": SCHEMA_VERSION,
            "melu_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "data_fingerprint": fingerprint,
            "config": config.to_dict(),
        }
        features.save(tmp / "features.json")
        _catalog_with_features(catalog, tables).to_parquet(tmp / "catalog.parquet", index=False)
        (tmp / "metrics.json").write_text(
            json.dumps(metrics or {}, indent=1, sort_keys=True, allow_nan=False) + "\n"
        )
        info["digests"] = digests_of(tmp)
        (tmp / "config.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def find_bundle(path: Path | str) -> Path:
    """The bundle folder meant by ``path``: itself, or the ``model/`` of a run folder that
    ``melu train`` wrote. Not validated here: ``load_bundle`` says what is wrong."""
    path = recover(path)
    if not (path / "config.json").is_file() and recover(path / "model").is_dir():
        return recover(path / "model")
    return path


def with_later_parts(
    params: Mapping[str, Tensor], shapes: Mapping[str, torch.Size]
) -> dict[str, Tensor]:
    """``params`` of a saved ranking head, the parts added since (``ranking.LATER``) that it
    lacks set to zeros: off, so it ranks exactly as it was saved to."""
    out = dict(params)
    if any(k.startswith(ranking.PREFIX) for k in out):
        for name in ranking.LATER:
            if name in shapes and name not in out:
                out[name] = torch.zeros(shapes[name])
    return out


def load_bundle(path: Path | str) -> Bundle:
    """Load and validate a bundle; raises ``BundleError`` naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"{path}: no model bundle here (expected runs/NAME or runs/NAME/model from `melu train`)"
        )
    missing = [f for f in BUNDLE_FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"{path}: incomplete bundle, missing {', '.join(missing)}")
    info = read_json(path / "config.json")
    if not isinstance(info, dict) or info.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{path}/config.json: schema version {info.get('schema_version') if isinstance(info, dict) else None!r}"
            f" is not {SCHEMA_VERSION}; retrain or use a matching melu"
        )
    check_digests(path, info)
    try:
        config = Config.from_saved(info["config"])
    except (KeyError, ConfigError) as exc:
        raise BundleError(f"{path}/config.json: {exc}") from exc
    features = FeatureSpace.load(path / "features.json")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except PermissionError as exc:
        raise unreadable(path / "weights.safetensors", exc) from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}/weights.safetensors: unreadable or truncated ({exc})") from exc
    model = PreferenceEstimator(config.model, features)
    params = {k: v for k, v in tensors.items() if not k.startswith(INNER_LR_PREFIX)}
    inner = {
        k[len(INNER_LR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(INNER_LR_PREFIX)
    }
    params = with_later_parts(params, model.rank_shapes())  # older heads: parts off
    check_weights(path / "weights.safetensors", params, inner, model, config)
    try:
        catalog = pd.read_parquet(path / "catalog.parquet")
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise BundleError(f"{path}/catalog.parquet: unreadable ({exc})") from exc
    check_catalog(path / "catalog.parquet", catalog)
    tables = item_tables(path / "catalog.parquet", catalog, features)
    metrics = check_metrics(path / "metrics.json", read_json(path / "metrics.json"))
    return Bundle(
        config, features, model, params, catalog, tables, inner or None, metrics, info, path
    )
