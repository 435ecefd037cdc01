"""Helpers shared by the recommendation and prediction routes."""

from __future__ import annotations

from typing import Any

from melu.serving import Adaptation, InvalidInput, Scored
from service.deps import Loaded
from service.schemas import Adaptation as AdaptationOut
from service.schemas import ModelRef, Rating, ScoredItem, User


def check_size(field: str, values: list[Any] | None, limit: int, setting: str) -> None:
    """A list longer than its limit → 422 naming the field and the setting."""
    if values is not None and len(values) > limit:
        raise InvalidInput((field,), len(values), f"at most {limit} entries allowed ({setting})")


def user_dict(user: User) -> dict[str, Any]:
    return user.model_dump(exclude_none=True)


def pairs(ratings: list[Rating]) -> list[tuple[int, float]]:
    return [(r.item_id, r.rating) for r in ratings]


def adaptation(info: Adaptation) -> AdaptationOut:
    return AdaptationOut(
        steps=info.steps,
        support_loss_before=info.support_loss_before,
        support_loss_after=info.support_loss_after,
    )


def model_ref(loaded: Loaded) -> ModelRef:
    return ModelRef(version=loaded.version, dataset=loaded.dataset)


def scored(items: list[Scored]) -> list[ScoredItem]:
    return [
        ScoredItem(
            item_id=s.item_id, title=s.title, year=s.year, genres=list(s.genres), score=s.score
        )
        for s in items
    ]
