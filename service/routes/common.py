"""Helpers shared by the recommendation and prediction routes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from melu.serving import Adaptation, InvalidInput, Scored
from service.deps import Loaded
from service.errors import Unavailable
from service.schemas import Adaptation as AdaptationOut
from service.schemas import ModelRef, Rating, Reason, ScoredItem, User


def check_size(field: str, values: list[Any] | None, limit: int, setting: str) -> None:
    """A list longer than its limit → 422 naming the field and the setting."""
    if values is not None and len(values) > limit:
        raise InvalidInput((field,), len(values), f"at most {limit} entries allowed ({setting})")


def check_finite(values: Iterable[float | None], loaded: Loaded) -> None:
    """Scores that are NaN or infinite are never served: 503 naming the model version."""
    if not all(v is None or math.isfinite(v) for v in values):
        raise Unavailable(
            f"model {loaded.version} gave non-finite scores for this request; not answered",
            "non_finite_scores",
        )


def user_dict(user: User) -> dict[str, Any]:
    return user.model_dump(exclude_none=True)


def pairs(ratings: list[Rating]) -> list[tuple[int, float]]:
    return [(r.item_id, r.rating) for r in ratings]


def adaptation(info: Adaptation, loaded: Loaded) -> AdaptationOut:
    check_finite((info.support_loss_before, info.support_loss_after), loaded)
    return AdaptationOut(
        steps=info.steps,
        support_loss_before=info.support_loss_before,
        support_loss_after=info.support_loss_after,
    )


def model_ref(loaded: Loaded) -> ModelRef:
    return ModelRef(version=loaded.version, dataset=loaded.dataset)


def scored(items: list[Scored], loaded: Loaded) -> list[ScoredItem]:
    check_finite((s.score for s in items), loaded)
    return [_item(s) for s in items]


def _item(s: Scored) -> ScoredItem:
    because = [Reason(item_id=r.item_id, title=r.title, rating=r.rating) for r in s.because]
    return ScoredItem(
        item_id=s.item_id,
        title=s.title,
        year=s.year,
        genres=list(s.genres),
        score=s.score,
        because=because,
    )
