"""POST /v1/predictions: the predicted rating of given items after adapting."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import ModelThreadDep, ReadyDep, SettingsDep
from service.observability import observe_request
from service.routes.common import (
    adaptation,
    check_finite,
    check_size,
    model_ref,
    pairs,
    user_dict,
)
from service.schemas import ERRORS, Prediction, PredictionRequest, PredictionResponse

router = APIRouter(prefix="/v1", tags=["predictions"])


@router.post("/predictions", response_model=PredictionResponse, responses=ERRORS)
async def predict(
    body: PredictionRequest,
    loaded: ReadyDep,
    settings: SettingsDep,
    model: ModelThreadDep,
    request: Request,
) -> PredictionResponse:
    """Predicted rating (clamped to the scale) of each of `item_ids`, in request order."""
    check_size("ratings", body.ratings, settings.max_ratings, "MELU_MAX_RATINGS")
    check_size("item_ids", body.item_ids, settings.max_items, "MELU_MAX_ITEMS")
    scores, info = await model.call(
        loaded.recommender.predict, user_dict(body.user), pairs(body.ratings), body.item_ids
    )
    observe_request(request.scope, "predictions", [len(body.ratings)], info.seconds)
    check_finite(scores, loaded)
    return PredictionResponse(
        predictions=[
            Prediction(item_id=i, rating=s) for i, s in zip(body.item_ids, scores, strict=True)
        ],
        adaptation=adaptation(info, loaded),
        model=model_ref(loaded),
    )
