"""Dependencies shared by the routers: the served model (from ``service.slot``) and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from melu.serving import Recommender
from service.settings import Settings


@dataclass(frozen=True)
class Loaded:
    """What the lifespan loads once: the recommender and the model's identity."""

    recommender: Recommender
    version: str  # first 12 hex digits of sha256(weights.safetensors)
    dataset: str


def get_loaded(request: Request) -> Loaded:
    """The model this request is answered with, taken once: a reload that swaps the slot
    meanwhile does not change it. 503 while no model is loaded."""
    loaded = request.app.state.slot.current
    if loaded is None:
        raise HTTPException(503, "the model is not loaded yet (see GET /ready)")
    request.scope["melu.model"] = loaded.version  # the X-Model-Version of this response
    return loaded  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


LoadedDep = Annotated[Loaded, Depends(get_loaded)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
