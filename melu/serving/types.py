"""What serving takes and gives: a person's ratings, and the typed items that come back.

Plain frozen dataclasses, kept apart from the ``Recommender`` so the service and the CLI
can name them without the model. Errors are :class:`melu.errors.InvalidInput`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Ratings = Sequence[tuple[int, float]]  # (data set item id, rating) pairs, possibly none
User = Mapping[str, Any]  # raw demographics, any subset: gender, age (years), occupation, zip


@dataclass(frozen=True)
class Adaptation:
    """How the inner loop went: ``steps`` run and the support MSE before and after."""

    steps: int
    support_loss_before: float | None
    support_loss_after: float | None
    seconds: float = field(default=0.0, compare=False)  # wall time of the inner loop


@dataclass(frozen=True)
class Request:
    """One person to recommend for (what ``Recommender.recommend`` takes, as a value)."""

    user: User | None
    ratings: Ratings
    k: int = 10
    exclude_rated: bool = True
    candidates: Sequence[int] | None = None


@dataclass(frozen=True)
class Item:
    """One catalog item: the data set's id and what a person sees of it."""

    item_id: int
    title: str
    year: int | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class Reason:
    """A rated item behind a recommendation: "because you rated <title> <rating>★"."""

    item_id: int
    title: str
    rating: float


@dataclass(frozen=True)
class Scored(Item):
    """A ranked item with its predicted rating (clamped to the scale) and the person's
    rated items that raised its rank most (best first; empty without a ranking head)."""

    score: float
    because: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class Recommendations:
    items: list[Scored]
    adaptation: Adaptation


@dataclass(frozen=True)
class OnboardingItem(Item):
    """An item to ask a new user about: ``score = log(1 + n_ratings) × influence``.

    ``influence`` is the mean |Δ prediction| between rating it high and rating it low.
    """

    n_ratings: int
    influence: float
    score: float


@dataclass(frozen=True)
class ItemPage:
    """One page of a catalog search: ``total`` matches, ``items`` from ``offset``."""

    total: int
    limit: int
    offset: int
    items: list[Item]
