"""POST /v1/recommendations: adapt to the person's ratings, return the top k."""

from __future__ import annotations

from fastapi import APIRouter

from melu.serving import InvalidInput
from service.deps import LoadedDep, SettingsDep
from service.routes.common import adaptation, check_size, model_ref, pairs, user_dict
from service.schemas import ERRORS, RecommendationRequest, RecommendationResponse, ScoredItem

router = APIRouter(prefix="/v1", tags=["recommendations"])


@router.post("/recommendations", response_model=RecommendationResponse, responses=ERRORS)
def recommend(
    body: RecommendationRequest, loaded: LoadedDep, settings: SettingsDep
) -> RecommendationResponse:
    """Rank the catalog (or `candidate_ids`) for a new user after adapting to `ratings`.

    Zero ratings is fine: the ranking then uses the user's features only.
    """
    check_size("ratings", body.ratings, settings.max_ratings, "MELU_MAX_RATINGS")
    check_size("candidate_ids", body.candidate_ids, settings.max_items, "MELU_MAX_ITEMS")
    rec = loaded.recommender
    if settings.max_k is not None and body.k > settings.max_k:
        raise InvalidInput(("k",), body.k, f"must be at most {settings.max_k} (MELU_MAX_K)")
    result = rec.recommend(
        user_dict(body.user),
        pairs(body.ratings),
        k=body.k,
        exclude_rated=body.exclude_rated,
        candidates=body.candidate_ids,
    )
    items = [
        ScoredItem(
            item_id=s.item_id, title=s.title, year=s.year, genres=list(s.genres), score=s.score
        )
        for s in result.items
    ]
    return RecommendationResponse(
        items=items, adaptation=adaptation(result.adaptation), model=model_ref(loaded)
    )
