"""GET /health (liveness), GET /ready (readiness) and GET /metrics (Prometheus).

``/health`` answers 200 whenever the process serves HTTP: restart the process only when it
fails. ``/ready`` answers 200 once the bundle is loaded and a warm-up request has run (503
before): send traffic only when it passes. A reload keeps the old model serving, so
``/ready`` stays 200 through it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.observability import metrics_body
from service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    """Liveness: the process answers (the model may still be loading)."""
    loaded = request.app.state.slot.current
    return Health(status="ok", n_items=loaded.recommender.n_items if loaded else None)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: loading or warming up"}},
)
def ready(request: Request) -> Response:
    """Readiness: 200 once the model is loaded and warmed up, else 503."""
    slot = request.app.state.slot
    version = slot.current.version if slot.current else None
    if slot.current is None:
        body = Readiness(status="loading", model_version=None)
    elif slot.failure:
        body = Readiness(status="warm-up failed", model_version=version)
    elif not slot.ready:
        body = Readiness(status="warming up", model_version=version)
    else:
        body = Readiness(status="ready", model_version=version)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus metrics in the text exposition format (all workers in multiprocess mode)."""
    body, content_type = metrics_body()
    return Response(body, media_type=content_type)
