"""POST /v1/recommendations (one person) and POST /v1/recommendations/batch (many)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from melu.serving import InvalidInput
from melu.serving import Request as Wanted
from service.deps import ModelThreadDep, ReadyDep, SettingsDep
from service.observability import observe_request
from service.routes.common import (
    adaptation,
    batch_body,
    check_size,
    model_ref,
    pairs,
    scored,
    user_dict,
)
from service.schemas import (
    ERRORS,
    BatchRequest,
    BatchResponse,
    RecommendationRequest,
    RecommendationResponse,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["recommendations"])


def _checked(body: RecommendationRequest, settings: Settings) -> Wanted:
    """The request's limits checked (422 naming the field), as the library's request."""
    check_size("ratings", body.ratings, settings.max_ratings, "MELU_MAX_RATINGS")
    check_size("candidate_ids", body.candidate_ids, settings.max_items, "MELU_MAX_ITEMS")
    if settings.max_k is not None and body.k > settings.max_k:
        raise InvalidInput(("k",), body.k, f"must be at most {settings.max_k} (MELU_MAX_K)")
    return Wanted(
        user_dict(body.user), pairs(body.ratings), body.k, body.exclude_rated, body.candidate_ids
    )


@router.post("/recommendations", response_model=RecommendationResponse, responses=ERRORS)
async def recommend(
    body: RecommendationRequest,
    loaded: ReadyDep,
    settings: SettingsDep,
    model: ModelThreadDep,
    request: Request,
) -> RecommendationResponse:
    """Rank the catalog (or `candidate_ids`) for a new user after adapting to `ratings`.

    Zero ratings is fine: the ranking then uses the user's features only. Requests that
    arrive together are adapted together (MELU_BATCH_WAIT_MS, MELU_BATCH_REQUESTS); the
    answer is this request's alone either way.
    """
    wanted = _checked(body, settings)
    result = await model.recommend(loaded.recommender, wanted)
    observe_request(
        request.scope, "recommendations", [len(body.ratings)], result.adaptation.seconds
    )
    return RecommendationResponse(
        items=scored(result.items, loaded),
        adaptation=adaptation(result.adaptation, loaded),
        model=model_ref(loaded),
    )


@router.post("/recommendations/batch", response_model=BatchResponse, responses=ERRORS)
async def recommend_batch(
    body: BatchRequest,
    loaded: ReadyDep,
    settings: SettingsDep,
    model: ModelThreadDep,
    request: Request,
) -> Response:
    """Recommendations for up to MELU_MAX_BATCH users, adapted together in one batched pass,
    answering at most MELU_MAX_BATCH_ITEMS items in all (the sum of k over the users).

    Each entry of `users` is a POST /v1/recommendations body; `results` has one answer per
    user, in order, equal to that user's single answer (up to float rounding). If any user
    is invalid the whole batch gets a 422 whose `loc` names that user
    (`["body", "users", 3, "ratings", 0, "rating"]`); nothing is answered.
    """
    check_size("users", body.users, settings.max_batch, "MELU_MAX_BATCH")
    asked = sum(one.k for one in body.users)
    if asked > settings.max_batch_items:
        raise InvalidInput(
            ("users",),
            f"{len(body.users)} users, k summing to {asked}",
            f"a batch answers at most {settings.max_batch_items} items in all (the sum of k"
            f" over its users; MELU_MAX_BATCH_ITEMS): ask for fewer users or a smaller k",
        )
    wanted = []
    for i, one in enumerate(body.users):
        try:
            wanted.append(_checked(one, settings))
        except InvalidInput as exc:
            raise InvalidInput(("users", i, *exc.loc), exc.value, exc.reason) from None
    try:
        results = await model.call(loaded.recommender.recommend_many, wanted)
    except InvalidInput as exc:
        raise InvalidInput(("users", *exc.loc), exc.value, exc.reason) from None
    seconds = max((r.adaptation.seconds for r in results), default=0.0)
    observe_request(
        request.scope, "recommendations/batch", [len(u.ratings) for u in body.users], seconds
    )
    # the declared BatchResponse, encoded straight from the answers (see batch_body)
    return Response(batch_body(results, loaded), media_type="application/json")
