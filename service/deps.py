"""Dependencies shared by the routers: the served model (from ``service.slot``), the model
thread (``service.batching``) and settings. ``async def``: they only read app state, and a
sync dependency would cost every request a hop through the thread pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from melu.serving import Recommender
from service.batching import ModelThread
from service.errors import Unavailable
from service.settings import Settings


@dataclass(frozen=True)
class Loaded:
    """What the lifespan loads once: the recommender and the model's identity."""

    recommender: Recommender
    version: str  # service.app.model_version: a digest of the files that change answers
    dataset: str


async def get_loaded(request: Request) -> Loaded:
    """The model this request is answered with, taken once: a reload that swaps the slot
    meanwhile does not change it. 503 while no model is loaded."""
    loaded = request.app.state.slot.current
    if loaded is None:
        raise Unavailable("the model is not loaded yet (see GET /ready)", "model_not_ready")
    request.scope["melu.model"] = loaded.version  # the X-Model-Version of this response
    return loaded  # type: ignore[no-any-return]


async def get_ready(request: Request) -> Loaded:
    """As ``get_loaded``, for the routes that compute with the model: 503 naming why until
    the model has passed its warm-up (finite scores), so a model that cannot answer never
    does."""
    loaded = await get_loaded(request)
    slot = request.app.state.slot
    if not slot.ready:
        why = slot.failure or "the model is warming up"
        raise Unavailable(f"not ready: {why} (see GET /ready)", "model_not_ready")
    return loaded


async def get_model_thread(request: Request) -> ModelThread:
    """The worker's one model thread (``service.batching``): every model computation."""
    return request.app.state.model_thread  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


LoadedDep = Annotated[Loaded, Depends(get_loaded)]
ReadyDep = Annotated[Loaded, Depends(get_ready)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelThreadDep = Annotated[ModelThread, Depends(get_model_thread)]
