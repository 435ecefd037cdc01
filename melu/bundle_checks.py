"""Bundle validation: each bundle file checked against the model it claims to hold.

Used by ``melu.bundle.load_bundle``: sha256 digests, JSON reading, weight names/shapes/
dtypes (and Meta-SGD rates), catalog columns and values, metrics, and the catalog's
encoded feature columns read back into item ``FeatureTables``. Every failure is a
``BundleError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu.config import Config
from melu.errors import BundleError
from melu.features import FeatureSpace, Field
from melu.model import ranking
from melu.model.estimator import Params, PreferenceEstimator
from melu.tables import FeatureTables

INNER_LR_PREFIX = "inner_lr."  # weights.safetensors key prefix of the Meta-SGD rates
DIGESTED = ("weights.safetensors", "features.json", "catalog.parquet", "metrics.json")


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


def digests_of(path: Path) -> dict[str, str]:
    """The sha256 of each digested file of the bundle folder ``path`` (config.json's record)."""
    return {name: file_sha256(path / name) for name in DIGESTED}


def check_digests(path: Path, info: dict[str, Any]) -> None:
    """Each file's sha256 against config.json's record: flipped bytes or a file from
    another bundle are refused, naming the file. A bundle without the record is refused
    too (its files could not be checked); there is no way around that: re-save it with
    ``melu.bundle.save_bundle`` from a trusted copy, which records the digests."""
    digests = info.get("digests")
    if digests is None:
        raise BundleError(
            f"{path}/config.json: no 'digests' record, so the bundle's files cannot be "
            "checked; refusing it (re-save it with this melu from a trusted copy)"
        )
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise unreadable(path, exc) from exc
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable, not valid JSON ({str(exc)[:200]})") from exc


CATALOG_COLUMNS = ("item_id", "title", "year", "genres", "n_ratings")


def check_weights(
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
    free = {params[k].shape[-1] for k in ranking.FREE_LAST if k in params}
    if len(free) > 1:
        raise BundleError(
            f"{file}: {', '.join(ranking.FREE_LAST)} disagree on the number of training "
            f"users ({sorted(free)})"
        )
    for prefix, group in (("", params), (INNER_LR_PREFIX, inner)):
        for k in [k for k in expected if k in group]:  # in the model's order
            value = group[k]
            want = expected[k]
            if k in ranking.FREE_LAST and group is params and value.dim() == len(want):
                want = torch.Size((*want[:-1], value.shape[-1]))  # any number of users
            if value.shape != want:
                raise BundleError(
                    f"{file}: {prefix}{k} has shape {tuple(value.shape)}, expected "
                    f"{tuple(expected[k])}"
                )
            if value.dtype != torch.float32 or not torch.isfinite(value).all():
                raise BundleError(f"{file}: {prefix}{k} must be finite float32 ({value.dtype})")


def check_catalog(file: Path, catalog: pd.DataFrame) -> None:
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
        "year": _year_ok,
    }
    for column, ok in checks.items():
        for row, value in enumerate(catalog[column].tolist()):
            if not ok(value):
                raise BundleError(f"{file}: row {row} has an invalid {column} {value!r:.80}")


def _year_ok(value: Any) -> bool:
    """A year: missing (None, NA, NaN) or a whole number 0..9999 (never inf)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return False
    number = float(value)
    return np.isnan(number) or (number.is_integer() and 0 <= number <= 9999)


def check_metrics(file: Path, metrics: Any) -> dict[str, Any]:
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


def item_tables(file: Path, catalog: pd.DataFrame, features: FeatureSpace) -> FeatureTables:
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
