"""MovieLens age buckets, defined once: ml-1m's codes, used for ml-100k's raw ages too.

The ml-100k reader buckets its raw ages with ``age_buckets`` so both demographic data sets
share one vocabulary; ``FeatureSpace.encode_user`` buckets a request's age with
``age_bucket``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # lower edges of the MovieLens age buckets after the first
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)  # ml-1m's codes: 1 is "under 18", 56 is "56+"


def age_buckets(ages: np.ndarray) -> np.ndarray:
    """Raw ages (N,) → their ml-1m bucket codes (N,) int64 (1: <18, 18, 25, 35, 45, 50, 56+)."""
    return np.asarray(AGE_CODES, dtype=np.int64)[np.searchsorted(AGE_EDGES, ages, side="right")]


def age_bucket(age: Any) -> str:
    """One raw age (e.g. 23) → its bucket as the vocabularies hold it ("18").

    Bucket codes map to themselves; non-numbers pass through as text; NaN/inf → "" (unknown).
    """
    try:
        value = float(age)
    except (TypeError, ValueError):
        return str(age)
    if not math.isfinite(value):
        return ""
    return str(int(age_buckets(np.asarray([value]))[0]))
