"""What a recommendation request and answer are: results, and the input errors.

Kept apart from the ``Recommender`` so the service and CLI can name them without the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melu.errors import MeluError

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens age buckets: 1, 18, 25, 35, 45, 50, 56
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
Ratings = Sequence[tuple[int, float]]


class InvalidInput(MeluError, ValueError):
    """A request value the model cannot use; ``field`` is its path, e.g. ``ratings[2].rating``."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        super().__init__(f"{field}: {message} (got {value!r})")
        self.field = field
        self.value = value
        self.reason = message


@dataclass(frozen=True)
class Adaptation:
    """How the inner loop went: ``steps`` run and the support MSE before and after."""

    steps: int
    support_loss_before: float | None
    support_loss_after: float | None


@dataclass(frozen=True)
class Scored:
    """One ranked item: the data set's id, catalog fields and the predicted rating."""

    item_id: int
    title: str
    year: int | None
    genres: tuple[str, ...]
    score: float


@dataclass(frozen=True)
class Recommendations:
    items: list[Scored]
    adaptation: Adaptation


def age_bucket(age: Any) -> str:
    """A raw age (e.g. 23) → its MovieLens bucket ("18"); non-numbers pass through as text."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return str(age)
    if not math.isfinite(value):
        return ""
    return str(AGE_CODES[int(np.searchsorted(AGE_EDGES, value, side="right"))])
