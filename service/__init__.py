"""The melu HTTP service: ``create_app(settings)`` builds the FastAPI app (see ``service.app``)."""

from __future__ import annotations

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
