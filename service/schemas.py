"""Request and response bodies of the HTTP API (pydantic), with examples for ``/docs``.

Types and shapes are checked here (422 naming the field); what depends on the model (item
ids in the catalog, the rating scale, ``k`` against the catalog) is checked by the
``Recommender`` and reported in the same 422 format.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # no "5", no true
ItemId = Annotated[
    int, Field(strict=True, ge=-(2**62), le=2**62, description="the data set's movie id")
]


def _encodable(text: str) -> str:
    """Refuse strings that are not valid Unicode (a JSON ``\\ud800`` lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate escape)") from None
    return text


Text = Annotated[str, Field(max_length=64), AfterValidator(_encodable)]


class User(BaseModel):
    """What we know about the person; every field is optional, unknown values are fine."""

    model_config = ConfigDict(extra="forbid", strict=True)

    gender: Text | None = Field(None, examples=["F"])
    age: Annotated[int, Field(ge=0, le=150)] | None = Field(None, examples=[25])
    occupation: Text | None = Field(None, examples=["student"])
    zip: Text | None = Field(None, examples=["94110"])


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId
    rating: Finite = Field(description="on the data set's scale, e.g. 1..5")


EXAMPLE_RATINGS: list[Any] = [{"item_id": 50, "rating": 5}, {"item_id": 181, "rating": 4}]


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # no "5" for 5, no true for 1, no "yes" for true
        json_schema_extra={
            "examples": [{"user": {"gender": "F", "age": 25}, "ratings": EXAMPLE_RATINGS, "k": 10}]
        },
    )

    user: User = Field(default_factory=User)
    ratings: list[Rating] = Field(default_factory=list, description="may be empty")
    k: int = Field(10, description="how many items, 1..catalog size")
    exclude_rated: bool = True
    candidate_ids: list[ItemId] | None = Field(None, description="rank only these items")


class PredictionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"user": {"gender": "M"}, "ratings": EXAMPLE_RATINGS, "item_ids": [1, 2]}]
        },
    )

    user: User = Field(default_factory=User)
    ratings: list[Rating] = Field(default_factory=list)
    item_ids: list[ItemId] = Field(min_length=1)


class Item(BaseModel):
    item_id: int
    title: str
    year: int | None
    genres: list[str]


class Reason(BaseModel):
    item_id: int = Field(description="a movie the person rated")
    title: str
    rating: float = Field(description="the rating they gave it")


class ScoredItem(Item):
    score: float = Field(description="predicted rating, clamped to the scale")
    because: list[Reason] = Field(
        default_factory=list,
        description="the person's rated movies that raised this item's rank most, best first "
        "(empty without ratings or without a ranking head)",
    )


class Adaptation(BaseModel):
    steps: int
    support_loss_before: float | None
    support_loss_after: float | None


class ModelRef(BaseModel):
    version: str
    dataset: str


class RecommendationResponse(BaseModel):
    items: list[ScoredItem]
    adaptation: Adaptation
    model: ModelRef


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "users": [
                        {"user": {"gender": "F", "age": 25}, "ratings": EXAMPLE_RATINGS, "k": 5},
                        {"user": {"occupation": "student"}, "ratings": [], "k": 5},
                    ]
                }
            ]
        },
    )

    users: list[RecommendationRequest] = Field(
        min_length=1, description="each user's request, as for POST /v1/recommendations"
    )


class BatchResult(BaseModel):
    items: list[ScoredItem]
    adaptation: Adaptation


class BatchResponse(BaseModel):
    results: list[BatchResult] = Field(description="one per user, in request order")
    model: ModelRef


class Prediction(BaseModel):
    item_id: int
    rating: float


class PredictionResponse(BaseModel):
    predictions: list[Prediction]
    adaptation: Adaptation
    model: ModelRef


class OnboardingItem(Item):
    n_ratings: int
    influence: float = Field(description="mean |Δ prediction| between rating it high vs low")
    score: float = Field(description="log(1 + n_ratings) × influence")


class OnboardingResponse(BaseModel):
    items: list[OnboardingItem]


class ItemPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Item]


class ModelInfo(BaseModel):
    version: str
    dataset: str
    n_items: int
    rating_scale: list[float] = Field(min_length=2, max_length=2, description="[low, high]")
    inner_steps: int
    fast_params: str
    data_fingerprint: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    info: dict[str, Any]
    user_values: dict[str, list[str]] = Field(
        default_factory=dict,
        description="the values the model knows for gender and occupation (others are "
        "treated as unknown); the onboarding page offers them",
    )


class Health(BaseModel):
    status: str
    n_items: int | None = Field(description="catalog size of the served model, null before load")


class Readiness(BaseModel):
    status: str = Field(description="ready, warming up, warm-up failed or loading")
    model_version: str | None


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail] | str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "body bytes could not be parsed at all"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid input; `loc` names the field"},
}
