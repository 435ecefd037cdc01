"""The app factory: ``create_app(settings)``; the lifespan loads the bundle once.

A missing or corrupt bundle makes start-up fail (``BundleError`` from the lifespan), so
uvicorn exits instead of serving a half-ready app. The model then warms up in a thread
(``GET /ready``: 503 until it has) and ``MELU_RELOAD_INTERVAL`` polls for a new bundle
(``service.slot``). Model work runs on one thread per worker, which groups
recommendations that arrive together (``service.batching``). ``uvicorn --factory
service.app:create_app`` builds it from ``MELU_*`` environment variables (one per worker).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from melu.bundle_checks import file_sha256
from melu.serving import InvalidInput, Recommender, __version__
from service.batching import CountInFlight, InFlight, ModelThread
from service.deps import Loaded
from service.errors import (
    BodyLimit,
    HeadAsGet,
    Unavailable,
    invalid_input_handler,
    unavailable_handler,
    validation_handler,
)
from service.logs import configure_logs
from service.observability import Observe, model_changed, multiprocess_mode, sample_worker_process
from service.routes import ROUTERS
from service.settings import Settings
from service.slot import ModelSlot

log = logging.getLogger("melu.service")


ANSWERING = (
    "weights.safetensors",
    "config.json",
    "features.json",
    "catalog.parquet",
    "catalog.csv",
)


def model_version(recommender: Recommender) -> str:
    """The served model's version: the first 12 hex digits of a sha256 over every bundle
    file that changes answers (weights, ``config.json`` with the inner steps and rates,
    the feature space, the catalog; not ``metrics.json``), each as name and content."""
    path = recommender.bundle.path
    if path is None:
        return "unsaved"
    digest = hashlib.sha256()
    for name in ANSWERING:
        if (path / name).is_file():
            digest.update(f"{name}\0{file_sha256(path / name)}\0".encode())
    return digest.hexdigest()[:12]


def load(settings: Settings) -> Loaded:
    """Load the bundle named by the settings (raises ``BundleError`` if unusable)."""
    recommender = Recommender.from_bundle(settings.model, threads=settings.torch_threads)
    dataset = recommender.bundle.config.data.dataset
    return Loaded(recommender, model_version(recommender), dataset)


def create_app(settings: Settings | None = None, loaded: Loaded | None = None) -> FastAPI:
    """The FastAPI app. ``loaded`` skips the first load (tests share one recommender)."""
    settings = settings or Settings()
    slot = ModelSlot(settings.model, lambda path: load(settings.model_copy(update={"model": path})))
    slot.on_swap = model_changed
    in_flight = InFlight()  # kept by CountInFlight; a group waits only while others come
    model_thread = ModelThread(settings.batch_wait_ms / 1e3, settings.batch_requests, in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        slot.start(loaded or load(settings))  # a bundle that cannot load stops start-up
        gc.freeze()  # the loaded model's ~200k objects out of full collections (~150 ms p99 spikes)
        model_thread.start()
        tasks = [asyncio.create_task(_warm(slot))]
        if settings.reload_interval > 0:
            tasks.append(asyncio.create_task(slot.poll(settings.reload_interval)))
        if multiprocess_mode():
            tasks.append(asyncio.create_task(sample_worker_process()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            model_thread.stop()

    app = FastAPIOffline(  # /docs and /redoc with their assets served locally, no CDN
        title="melu",
        version=__version__,
        summary="Cold-start movie recommendation: rate a few movies, get recommendations.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.slot = slot
    app.state.model_thread = model_thread
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(InvalidInput, invalid_input_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(Unavailable, unavailable_handler)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    if settings.cors_origins:  # off by default: the page is same-origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list(),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["content-type", "x-request-id"],
            expose_headers=["x-request-id", "x-model-version"],
        )
    configure_logs()
    app.add_middleware(CountInFlight, in_flight=in_flight)
    app.add_middleware(  # outermost: sees every response, 413s included
        Observe,
        current_version=lambda: slot.current.version if slot.current else None,
        log=settings.access_log,
    )
    return app


async def _warm(slot: ModelSlot) -> None:
    """Warm the start-up model in a worker thread; ``/ready`` answers 200 after it."""
    try:
        await asyncio.to_thread(slot.warm)
    except Exception:  # logged; /ready stays 503 so no traffic is sent to this worker
        log.exception("warm-up of the start-up model failed: not ready")
