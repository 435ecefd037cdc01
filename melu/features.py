"""FeatureSpace: vocabularies of user and item fields, and their encoding to index tensors.

Every vocabulary reserves index 0 for "unknown": a value never seen in the training rows
(a new user's zip code, a new item's director) maps to 0, so cold scenarios and serving
need no special case. Multi-valued fields (genres, directors, actors) are encoded as index
lists padded with 0 to a fixed length ``(N, L)`` and fed to ``nn.EmbeddingBag(mode="mean",
padding_idx=0)``, never as dense multi-hot rows. Ages are MovieLens buckets (defined once,
in ``melu.data.ages``: the ml-100k reader buckets raw ages with them, ``encode_user``
buckets a request's age).
The encoded result lives in ``FeatureTables`` (``melu.tables``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from melu.data.ages import age_bucket
from melu.errors import BundleError
from melu.tables import FeatureBatch
from melu.tables import FeatureTables as FeatureTables  # re-exported: its home was here

UNKNOWN = 0
MAX_LIST = 16  # multi-valued fields keep at most this many values (in file order)

USER_FIELDS = ("gender", "age", "occupation", "zip")
ITEM_SINGLE = ("item", "rate", "decade")
ITEM_MULTI = ("genres", "directors", "actors")


@dataclass(frozen=True)
class Field:
    """One categorical field. ``vocab[i]`` has index ``i + 1``; 0 is unknown/padding."""

    name: str
    source: Literal["user", "item"]
    multi: bool
    vocab: tuple[str, ...]
    max_len: int = 1

    @property
    def size(self) -> int:
        """Number of embedding rows, including the unknown row 0."""
        return len(self.vocab) + 1

    def index(self) -> dict[str, int]:
        return {value: i + 1 for i, value in enumerate(self.vocab)}


def user_values(users: pd.DataFrame, zip_prefix: int) -> pd.DataFrame:
    """Raw user columns → the string values the vocabularies hold (zip → its prefix)."""
    out = pd.DataFrame(index=users.index)
    for name in USER_FIELDS:
        if name not in users.columns or (name == "zip" and zip_prefix == 0):
            continue
        values = users[name].astype(str).str.strip()
        out[name] = values.str[:zip_prefix] if name == "zip" else values
    return out


def item_values(items: pd.DataFrame) -> dict[str, Any]:
    """Raw item columns → per-field values (strings, or lists of strings)."""
    out: dict[str, Any] = {"item": items["item_id"].astype(str).tolist()}
    if "rate" in items.columns:
        out["rate"] = items["rate"].fillna("").astype(str).tolist()
    year = items["year"].astype("Float64")
    out["decade"] = [
        "" if pd.isna(y) else f"{int(y) // 10 * 10}s" for y in year.to_numpy(dtype=object)
    ]
    for name in ITEM_MULTI:
        if name in items.columns:
            out[name] = [
                list(v)[:MAX_LIST] if isinstance(v, list | tuple | np.ndarray) else []
                for v in items[name]
            ]
    return out


def _vocab(values: Iterable[Any], multi: bool) -> tuple[str, ...]:
    seen: set[str] = set()
    for v in values:
        seen.update(v if multi else [v])
    seen.discard("")
    return tuple(sorted(seen))


def _codes(values: Iterable[str], vocab: tuple[str, ...]) -> np.ndarray:
    """(N,) int64 vocabulary indices (``vocab[i]`` → i + 1; anything else → 0), vectorised."""
    codes = pd.Index(vocab, dtype=object).get_indexer(pd.Index(list(values), dtype=object))
    return codes.astype(np.int64) + 1  # unknown/missing: -1 → 0 (a fresh, writable array)


def _list_codes(values: list[list[str]], vocab: tuple[str, ...], max_len: int) -> np.ndarray:
    """(N, max_len) int64 indices of each row's list, in order, padded with 0.

    Unknown entries keep their slot as 0, which ``EmbeddingBag(padding_idx=0)`` ignores.
    """
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    out = np.zeros((len(values), max_len), dtype=np.int64)
    if lengths.sum() == 0:
        return out
    rows = np.repeat(np.arange(len(values)), lengths)
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = [v for row in values for v in row]
    keep = slots < max_len
    out[rows[keep], slots[keep]] = _codes(flat, vocab)[keep]
    return out


@dataclass(frozen=True)
class FeatureSpace:
    """All fields of a data set, the rating scale, and the zip prefix length."""

    fields: tuple[Field, ...]
    rating_scale: tuple[float, float]
    rating_step: float
    zip_prefix: int

    @classmethod
    def build(
        cls,
        users: pd.DataFrame,
        items: pd.DataFrame,
        rating_scale: tuple[float, float],
        rating_step: float,
        zip_prefix: int = 2,
        item_id: bool = True,
        id_items: Iterable[int] | None = None,
    ) -> FeatureSpace:
        """Vocabularies from the *training* users and items only (caller filters them).

        ``item_id`` adds the item's own id as a field: items seen in training get their own
        embedding (it carries what content features cannot, e.g. how good a film is);
        new items map to "unknown" and are scored from their content alone. ``id_items``
        restricts that to the given ids (e.g. items with enough training ratings to learn
        an embedding from); the rest are "unknown" too.
        """
        fields: list[Field] = []
        uvals = user_values(users, zip_prefix)
        for name in uvals.columns:
            fields.append(Field(name, "user", False, _vocab(uvals[name], False)))
        for name, values in item_values(items).items():
            if name == "item":
                if not item_id:
                    continue
                if id_items is not None:
                    values = [str(i) for i in id_items]
            multi = name in ITEM_MULTI
            vocab = _vocab(values, multi)
            if not vocab:
                continue
            max_len = max((len(v) for v in values), default=1) if multi else 1
            fields.append(Field(name, "item", multi, vocab, max(1, max_len)))
        return cls(tuple(fields), rating_scale, rating_step, zip_prefix)

    @property
    def user_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.source == "user")

    @property
    def item_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.source == "item")

    def encode_users(self, users: pd.DataFrame) -> FeatureBatch:
        """``users`` frame → field → (U,) int64 indices (unknown values → 0)."""
        uvals = user_values(users, self.zip_prefix)
        out: FeatureBatch = {}
        for f in self.user_fields:
            column = uvals[f.name] if f.name in uvals.columns else [""] * len(users)
            out[f.name] = torch.from_numpy(_codes(column, f.vocab))
        return out

    @cached_property
    def _user_index(self) -> dict[str, dict[str, int]]:
        """Field → value → index, for the user fields (built once per space)."""
        return {f.name: f.index() for f in self.user_fields}

    def encode_user(
        self, values: Mapping[str, Any] | None, device: torch.device | str | None = None
    ) -> FeatureBatch:
        """One person's raw values (e.g. a request body) → field → () int64 index on ``device``.

        The rule of ``encode_users`` (text stripped, zip cut to its prefix, unknown → 0)
        without building a frame; a raw age (23) is first mapped to its bucket
        (:func:`age_bucket`), as the readers do for the frames.
        """
        return {k: torch.tensor(v, device=device) for k, v in self.user_indices(values).items()}

    def user_indices(self, values: Mapping[str, Any] | None) -> dict[str, int]:
        """``encode_user`` as plain ints: field → index (a batch stacks many people's into
        one tensor per field)."""
        values = values or {}
        out = {}
        for name, index in self._user_index.items():
            raw = values.get(name)
            text = "" if raw is None else (age_bucket(raw) if name == "age" else str(raw))
            text = text.strip()
            if name == "zip":
                text = text[: self.zip_prefix]
            out[name] = index.get(text, UNKNOWN)
        return out

    def encode_items(self, items: pd.DataFrame) -> FeatureBatch:
        """``items`` frame → field → (I,) or (I, L) int64 indices, lists padded with 0."""
        values = item_values(items)
        out: FeatureBatch = {}
        for f in self.item_fields:
            column = values.get(f.name, [[] if f.multi else ""] * len(items))
            if f.multi:
                out[f.name] = torch.from_numpy(_list_codes(column, f.vocab, f.max_len))
            else:
                out[f.name] = torch.from_numpy(_codes(column, f.vocab))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [{**asdict(f), "vocab": list(f.vocab)} for f in self.fields],
            "rating_scale": list(self.rating_scale),
            "rating_step": self.rating_step,
            "zip_prefix": self.zip_prefix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpace:
        try:
            fields = tuple(
                Field(
                    f["name"], f["source"], bool(f["multi"]), tuple(f["vocab"]), int(f["max_len"])
                )
                for f in data["fields"]
            )
            low, high = (float(v) for v in data["rating_scale"])
            step = float(data["rating_step"])
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"rating_scale {[low, high]} must be finite and increasing")
            if not (0 < step <= high - low):
                raise ValueError(f"rating_step {step} must be in (0, high - low]")
            if any(not isinstance(f["vocab"], list) for f in data["fields"]):
                raise ValueError("every field's vocabulary must be a list")
            for f in fields:
                if not all(isinstance(v, str) for v in f.vocab) or len(set(f.vocab)) != len(
                    f.vocab
                ):
                    raise ValueError(f"field {f.name!r}: vocabulary must be distinct strings")
            return cls(
                fields,
                (float(low), float(high)),
                float(data["rating_step"]),
                int(data["zip_prefix"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"features: malformed feature space ({exc!r})") from exc

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureSpace:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 / JSON
            raise BundleError(f"{path}: cannot read feature space ({str(exc)[:200]})") from exc
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: not a feature space ({str(exc)[:200]})") from exc
