"""Dependencies shared by the routers: the loaded recommender and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from melu.serving import Recommender
from service.settings import Settings


@dataclass(frozen=True)
class Loaded:
    """What the lifespan loads once: the recommender and the model's identity."""

    recommender: Recommender
    version: str  # first 12 hex digits of sha256(weights.safetensors)
    dataset: str


def get_loaded(request: Request) -> Loaded:
    return request.app.state.loaded  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


LoadedDep = Annotated[Loaded, Depends(get_loaded)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
