"""The melu HTTP service: ``create_app(settings)`` builds the FastAPI app (see ``service.app``).

Imported lazily, so that ``service.supervise`` (the multi-worker supervisor) and
``service.protocol`` load neither torch nor the model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
