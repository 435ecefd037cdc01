"""GET /health: liveness and readiness (the bundle is loaded before the server listens)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import LoadedDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(loaded: LoadedDep) -> Health:
    return Health(status="ok", n_items=loaded.recommender.n_items)
