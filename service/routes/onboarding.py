"""GET /v1/onboarding: the items to ask a new user to rate first."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query

from service.deps import LoadedDep
from service.schemas import ERRORS, OnboardingItem, OnboardingResponse

router = APIRouter(prefix="/v1", tags=["onboarding"])


@router.get("/onboarding", response_model=OnboardingResponse, responses=ERRORS)
def onboarding(
    loaded: LoadedDep, n: Annotated[int, Query(ge=1, le=1000, description="how many")] = 10
) -> OnboardingResponse:
    """MeLU's evidence candidates: popular items whose rating moves the model most.

    Score = log(1 + n_ratings) × influence, where influence is the mean change of the
    adapted model's predictions between rating the item at the top vs the bottom of the scale.
    """
    frame = loaded.recommender.onboarding_items(n)
    items = [
        OnboardingItem(
            item_id=int(row.item_id),
            title=str(row.title),
            year=None if pd.isna(row.year) else int(row.year),
            genres=[str(g) for g in row.genres],
            n_ratings=int(row.n_ratings),
            influence=float(row.influence),
            score=float(row.onboarding_score),
        )
        for row in frame.itertuples(index=False)
    ]
    return OnboardingResponse(items=items)
