"""One router per resource."""

from __future__ import annotations

from service.routes import (
    health,
    items,
    model,
    onboarding,
    page,
    predictions,
    recommendations,
)

ROUTERS = (
    recommendations.router,
    predictions.router,
    onboarding.router,
    items.router,
    model.router,
    health.router,
    page.router,
)
