"""GET /v1/onboarding: the items to ask a new user to rate first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import ReadyDep
from service.routes.common import check_finite
from service.schemas import ERRORS, OnboardingItem, OnboardingResponse

router = APIRouter(prefix="/v1", tags=["onboarding"])


@router.get("/onboarding", response_model=OnboardingResponse, responses=ERRORS)
def onboarding(
    loaded: ReadyDep, n: Annotated[int, Query(ge=1, le=1000, description="how many")] = 10
) -> OnboardingResponse:
    """MeLU's evidence candidates: popular items whose rating moves the model most.

    Score = log(1 + n_ratings) × influence, where influence is the mean change of the
    adapted model's predictions between rating the item at the top vs the bottom of the scale.
    """
    chosen = loaded.recommender.onboarding_items(n)
    check_finite((x for i in chosen for x in (i.influence, i.score)), loaded)
    items = [
        OnboardingItem(
            item_id=i.item_id,
            title=i.title,
            year=i.year,
            genres=list(i.genres),
            n_ratings=i.n_ratings,
            influence=i.influence,
            score=i.score,
        )
        for i in chosen
    ]
    return OnboardingResponse(items=items)
