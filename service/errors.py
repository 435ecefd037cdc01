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


def finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf (which a request may carry) become the strings "nan"/"inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, made safe to encode when the bad input was NaN or inf."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k != "url"} for e in exc.errors()]
    return JSONResponse({"detail": finite(jsonable_encoder(errors))}, status_code=422)


async def invalid_input_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    query = len(exc.loc) == 1 and str(exc.loc[0]) in request.query_params
    where = "query" if query else "body"
    detail = {
        "loc": [where, *exc.loc],
        "msg": str(exc),
        "type": "value_error",
        "input": finite(jsonable_encoder(exc.value)),
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
