"""The app factory: ``create_app(settings)``; the lifespan loads the bundle once.

A missing or corrupt bundle makes start-up fail (``BundleError`` from the lifespan), so
uvicorn exits instead of serving a half-ready app. ``uvicorn --factory
service.app:create_app`` builds it from ``MELU_*`` environment variables (one per worker).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline

from melu.serving import InvalidInput, Recommender, __version__
from service.deps import Loaded
from service.errors import BodyLimit, HeadAsGet, invalid_input_handler, validation_handler
from service.routes import ROUTERS
from service.settings import Settings


def weights_digest(recommender: Recommender) -> str:
    """First 12 hex digits of sha256(weights.safetensors): the served model's version."""
    path = recommender.bundle.path
    if path is None:
        return "unsaved"
    return hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()[:12]


def load(settings: Settings) -> Loaded:
    """Load the bundle named by the settings (raises ``BundleError`` if unusable)."""
    recommender = Recommender.from_bundle(settings.model, threads=settings.torch_threads)
    dataset = recommender.bundle.config.data.dataset
    return Loaded(recommender, weights_digest(recommender), dataset)


def create_app(settings: Settings | None = None, loaded: Loaded | None = None) -> FastAPI:
    """The FastAPI app. ``loaded`` skips loading (tests share one recommender)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        app.state.loaded = loaded or load(settings)
        yield

    app = FastAPIOffline(  # /docs and /redoc with their assets served locally, no CDN
        title="melu",
        version=__version__,
        summary="Cold-start movie recommendation: rate a few movies, get recommendations.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(InvalidInput, invalid_input_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    return app
