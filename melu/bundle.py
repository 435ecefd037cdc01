"""The model bundle: everything needed to serve or evaluate a trained model, no pickle.

A directory holding ``weights.safetensors`` (meta-learned parameters, plus ``inner_lr.*``
for Meta-SGD), ``config.json`` (all configs, schema version, package versions, data
fingerprint), ``features.json`` (the FeatureSpace), ``catalog.parquet`` (items: ids,
titles, years, genres, popularity and their encoded feature indices) and ``metrics.json``.
It is written to a temporary sibling folder and renamed, so a killed run never leaves a
half-written bundle; loading checks the schema and every tensor's shape.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from melu import __version__
from melu.atomic import atomic_directory, recover
from melu.config import Config
from melu.errors import BundleError, ConfigError
from melu.features import FeatureSpace, FeatureTables, Field
from melu.model.estimator import Params, PreferenceEstimator

SCHEMA_VERSION = 1
BUNDLE_FILES = (
    "weights.safetensors",
    "config.json",
    "features.json",
    "catalog.parquet",
    "metrics.json",
)
INNER_LR_PREFIX = "inner_lr."
DIGESTED = ("weights.safetensors", "features.json", "catalog.parquet", "metrics.json")


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
        info["digests"] = {name: file_sha256(tmp / name) for name in DIGESTED}
        (tmp / "config.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unreadable(path: Path, exc: BaseException) -> BundleError:
    """The error for a file that cannot be read, saying so plainly for permissions."""
    if isinstance(exc, PermissionError):
        return BundleError(
            f"{path}: permission denied (this process cannot read it; make the bundle "
            "readable by the service's user, e.g. chmod -R a+rX)"
        )
    return BundleError(f"{path}: unreadable ({exc})")


def _check_digests(path: Path, info: dict[str, Any]) -> None:
    """Each file's sha256 against config.json's record (a bundle written before digests
    existed has none and is accepted): flipped bytes or a file from another bundle are
    refused, naming the file."""
    digests = info.get("digests")
    if digests is None:
        return
    if not isinstance(digests, dict) or set(digests) != set(DIGESTED):
        raise BundleError(f"{path}/config.json: 'digests' must list {', '.join(DIGESTED)}")
    for name in DIGESTED:
        try:
            actual = file_sha256(path / name)
        except OSError as exc:
            raise unreadable(path / name, exc) from exc
        if actual != digests[name]:
            raise BundleError(
                f"{path}/{name}: content does not match the sha256 recorded in config.json "
                "(corrupted, or copied from another bundle)"
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise unreadable(path, exc) from exc
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable, not valid JSON ({str(exc)[:200]})") from exc


CATALOG_COLUMNS = ("item_id", "title", "year", "genres", "n_ratings")


def _check_weights(
    file: Path, params: Params, inner: Params, model: PreferenceEstimator, config: Config
) -> None:
    """Names, shapes and dtypes of the weights (and Meta-SGD rates) against the model."""
    expected = model.shapes()
    if set(params) != set(expected):
        raise BundleError(
            f"{file}: parameters {sorted(set(params) ^ set(expected))} "
            "do not match the model in config.json"
        )
    fast = set(model.fast_names())
    if (inner or config.meta.learn_inner_lr) and set(inner) != fast:
        raise BundleError(
            f"{file}: inner learning rates {sorted(inner)} do not match the adapted "
            f"parameters {sorted(fast)} (learn_inner_lr={config.meta.learn_inner_lr})"
        )
    for prefix, group in (("", params), (INNER_LR_PREFIX, inner)):
        for k in [k for k in expected if k in group]:  # in the model's order
            value = group[k]
            if value.shape != expected[k]:
                raise BundleError(
                    f"{file}: {prefix}{k} has shape {tuple(value.shape)}, expected "
                    f"{tuple(expected[k])}"
                )
            if value.dtype != torch.float32 or not torch.isfinite(value).all():
                raise BundleError(f"{file}: {prefix}{k} must be finite float32 ({value.dtype})")


def _check_catalog(file: Path, catalog: pd.DataFrame) -> None:
    """Required columns and unique item ids."""
    missing = [c for c in CATALOG_COLUMNS if c not in catalog.columns]
    if missing:
        raise BundleError(f"{file}: catalog lacks column(s) {missing}")
    if catalog["item_id"].duplicated().any():
        raise BundleError(f"{file}: item ids are not unique")
    checks = {
        "item_id": lambda v: isinstance(v, int | np.integer) and 0 <= v < 2**31,
        "title": lambda v: isinstance(v, str),
        "genres": lambda v: (
            isinstance(v, list | tuple | np.ndarray) and all(isinstance(g, str) for g in v)
        ),
        "n_ratings": lambda v: isinstance(v, int | np.integer) and v >= 0,
        "year": lambda v: v is None or v is pd.NA or (isinstance(v, int | float | np.number)),
    }
    for column, ok in checks.items():
        for row, value in enumerate(catalog[column].tolist()):
            if not ok(value):
                raise BundleError(f"{file}: row {row} has an invalid {column} {value!r:.80}")


def _check_metrics(file: Path, metrics: Any) -> dict[str, Any]:
    """metrics.json: an object of numbers, strings, booleans or nulls (shown by /v1/model)."""
    scalar = (int, float, str, bool, type(None))
    if not isinstance(metrics, dict) or not all(isinstance(v, scalar) for v in metrics.values()):
        raise BundleError(f"{file}: must be a JSON object of numbers, strings or nulls")
    return metrics


def _feature_column(file: Path, catalog: pd.DataFrame, f: Field) -> np.ndarray:
    """The catalog's ``feat.<field>`` as (I,) or (I, L) int64 indices (a writable copy),
    checked to lie inside the field's vocabulary."""
    column = f"feat.{f.name}"
    if column not in catalog.columns:
        raise BundleError(f"{file}: catalog lacks column {column!r}")
    values = catalog[column].to_numpy()
    try:
        array = np.array(np.stack([np.asarray(v) for v in values]) if f.multi else values,
                         dtype=np.int64)  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{file}: column {column!r} is not integer indices ({exc})") from exc
    if f.multi and (array.ndim != 2 or array.shape[1] != f.max_len):
        raise BundleError(f"{file}: column {column!r} must hold {f.max_len} indices per item")
    if array.size and (array.min() < 0 or array.max() >= f.size):
        raise BundleError(
            f"{file}: column {column!r} has indices outside 0..{f.size - 1} "
            "(features.json does not match this catalog)"
        )
    return array


def _item_tables(file: Path, catalog: pd.DataFrame, features: FeatureSpace) -> FeatureTables:
    """Item rows only (catalog order), each feature column read and checked once."""
    items = {
        f.name: torch.from_numpy(_feature_column(file, catalog, f)) for f in features.item_fields
    }
    return FeatureTables(
        torch.empty(0, dtype=torch.int64),
        {},
        torch.from_numpy(np.array(catalog["item_id"], dtype=np.int64)),
        items,
    )


def find_bundle(path: Path | str) -> Path:
    """The bundle folder meant by ``path``: itself, or the ``model/`` of a run folder that
    ``melu train`` wrote. Not validated here: ``load_bundle`` says what is wrong."""
    path = recover(path)
    if not (path / "config.json").is_file() and recover(path / "model").is_dir():
        return recover(path / "model")
    return path


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
    info = _read_json(path / "config.json")
    if not isinstance(info, dict) or info.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{path}/config.json: schema version {info.get('schema_version') if isinstance(info, dict) else None!r}"
            f" is not {SCHEMA_VERSION}; retrain or use a matching melu"
        )
    _check_digests(path, info)
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
    _check_weights(path / "weights.safetensors", params, inner, model, config)
    try:
        catalog = pd.read_parquet(path / "catalog.parquet")
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise BundleError(f"{path}/catalog.parquet: unreadable ({exc})") from exc
    _check_catalog(path / "catalog.parquet", catalog)
    tables = _item_tables(path / "catalog.parquet", catalog, features)
    metrics = _check_metrics(path / "metrics.json", _read_json(path / "metrics.json"))
    return Bundle(
        config, features, model, params, catalog, tables, inner or None, metrics, info, path
    )
