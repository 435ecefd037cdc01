"""GET /: the onboarding page (static HTML and plain JavaScript, no external assets).

It calls the same-origin API: ``/v1/onboarding`` for movies to rate, ``/v1/items`` to
search, ``/v1/recommendations`` after every rating. Served from ``service/static``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/", response_class=HTMLResponse)
def page() -> Response:
    return Response(asset("index.html"), media_type="text/html; charset=utf-8")


@router.get("/static/app.css")
def style() -> Response:
    return Response(asset("app.css"), media_type="text/css; charset=utf-8")


@router.get("/static/app.js")
def script() -> Response:
    return Response(asset("app.js"), media_type="text/javascript; charset=utf-8")
