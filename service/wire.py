"""The shape of every error answer, shared by the app and the connection layer.

``{"detail": [{"loc": [...], "msg": "...", "type": "...", "input": null}]}`` is FastAPI's
422 shape; 413s, 503s and the connection-level 400/408/431 of ``service.protocol`` use it
too, so a client parses one format. No FastAPI or torch import: the multi-worker
supervisor imports ``service.protocol``, which uses this.
"""

from __future__ import annotations

import json


def error_body(loc: list[str | int], msg: str, kind: str) -> bytes:
    """One error in the API's shape, as JSON bytes."""
    detail = [{"loc": loc, "msg": msg, "type": kind, "input": None}]
    return json.dumps({"detail": detail}).encode()
