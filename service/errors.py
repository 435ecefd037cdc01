"""Error responses: library ``InvalidInput`` → 422, oversized bodies → 413, a model that
cannot answer → 503.

Every error body has FastAPI's shape, ``{"detail": [{"loc", "msg", "type", "input"}]}``,
with ``loc`` naming the field (e.g. ``["body", "ratings", 2, "rating"]``); so do the
connection-level answers of ``service.protocol`` (400, 408, 431).
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
from service.wire import error_body

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


class Unavailable(Exception):
    """The served model cannot answer this request (not ready, or non-finite scores): 503."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind  # the error body's "type": model_not_ready, non_finite_scores


async def unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unavailable)
    body = error_body(["model"], str(exc), exc.kind)
    return JSONResponse(json.loads(body), status_code=503, headers={"retry-after": "5"})


def too_large(limit: int) -> bytes:
    msg = f"request body larger than {limit} bytes (MELU_MAX_BODY_BYTES)"
    return error_body(["body"], msg, "too_large")


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
    """ASGI middleware: ``HEAD`` on a GET route answers like GET, without the body.

    FastAPI routes only GET, so the app is called with a copy of the scope whose method is
    GET; its status and headers (content-length included) pass through unchanged, every body
    message is sent empty. The server's own scope still says HEAD, so uvicorn expects no
    body bytes (it raised "Response content shorter than Content-Length" when the method
    was rewritten in place). What routing put in the copy (the matched ``route``, the model
    version) is copied back for the outer middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            scope.update({k: v for k, v in as_get.items() if k != "method"})
