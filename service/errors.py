"""Error responses: library ``InvalidInput`` → 422, oversized bodies → 413.

Every 4xx body has FastAPI's shape, ``{"detail": [{"loc", "msg", "type", "input"}]}``,
with ``loc`` naming the field (e.g. ``["body", "ratings", 2, "rating"]``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from melu.serving import InvalidInput

MAX_ECHO_TEXT = 200  # characters of a string echoed back in an error
MAX_ECHO_ITEMS = 10  # elements of a list or keys of an object echoed back
MAX_ECHO_DEPTH = 4


def safe(value: Any, depth: int = 0) -> Any:
    """A bounded, always-encodable copy of bad input to echo in an error body.

    NaN/inf become "nan"/"inf"; strings that are not valid Unicode (lone surrogates) are
    escaped; long strings, lists and objects are cut (marked with "…"), so a 250 KB request
    never gets a megabyte error reply and an error body can always be written.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_ECHO_TEXT else text[:MAX_ECHO_TEXT] + "…"
    if depth >= MAX_ECHO_DEPTH and isinstance(value, dict | list | tuple):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        out = {safe(str(k)): safe(v, depth + 1) for k, v in items[:MAX_ECHO_ITEMS]}
        return (
            {**out, "…": f"{len(items) - MAX_ECHO_ITEMS} more"}
            if len(items) > MAX_ECHO_ITEMS
            else out
        )
    if isinstance(value, list | tuple):
        out_list = [safe(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
        return [*out_list, "…"] if len(value) > MAX_ECHO_ITEMS else out_list
    return value


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, made safe to encode when the bad input was NaN or inf."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k != "url"} for e in exc.errors()[:MAX_ECHO_ITEMS]]
    return JSONResponse({"detail": safe(jsonable_encoder(errors))}, status_code=422)


async def invalid_input_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    query = len(exc.loc) == 1 and str(exc.loc[0]) in request.query_params
    where = "query" if query else "body"
    detail = {
        "loc": [where, *exc.loc],
        "msg": safe(str(exc)),
        "type": "value_error",
        "input": safe(jsonable_encoder(exc.value)),
    }
    return JSONResponse({"detail": [detail]}, status_code=422)


def too_large(limit: int) -> bytes:
    return json.dumps(
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": f"request body larger than {limit} bytes (MELU_MAX_BODY_BYTES)",
                    "type": "too_large",
                    "input": None,
                }
            ]
        }
    ).encode()


class BodyLimit:
    """ASGI middleware: read at most ``limit`` body bytes, else answer 413 (any framing)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        payload = too_large(self.limit)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class HeadAsGet:
    """ASGI middleware: ``HEAD`` on a GET route answers like GET (status and headers, with
    the GET body's content-length) but sends no body. FastAPI routes only GET."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        scope["method"] = "GET"  # in place: outer middleware sees the matched route
        await self.app(scope, receive, headers_only)
