"""One log format for everything the server writes: JSON lines (default) or text for humans.

``melu serve`` hands ``log_config(format, level)`` to uvicorn, so uvicorn's own lines
("Started server process", "Uvicorn running on ...", errors), the service's events
(``melu.service``: reloads, warm-up failures) and the access log (``melu.access``) all go
to stderr through the same formatter, in every worker. A JSON line is::

    {"time": "...", "level": "info", "logger": "uvicorn.error", "message": "..."}

and an access line is the request's own object (``service.observability``)::

    {"time": "...", "request_id": "...", "method": "POST", "route": "/v1/recommendations",
     "status": 200, "latency_ms": 2.91, "model_version": "3f2a...", "ratings": 5}

``--log-format text`` writes ``TIME LEVEL LOGGER: message`` and, for requests,
``TIME POST /v1/recommendations 200 2.9 ms id=... model=...``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("json", "text")
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "melu.service")


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonLines(logging.Formatter):
    """A record as one JSON object per line; access records as their own object."""

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            return json.dumps(access)
        line = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


class TextLines(logging.Formatter):
    """A record as one line for people: time, level, logger, message (tracebacks after)."""

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            a = access
            return (
                f"{a['time']} {a['method']} {a['route']} {a['status']} {a['latency_ms']} ms"
                f" id={a['request_id']} model={a['model_version']} ratings={a['ratings']}"
            )
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter(name: str) -> logging.Formatter:
    if name not in FORMATS:
        raise ValueError(f"log format {name!r}: use one of {', '.join(FORMATS)}")
    return JsonLines() if name == "json" else TextLines()


def log_config(name: str = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: every server logger to
    stderr in format ``name`` at ``level``; the access log always at INFO."""
    formatter(name)  # an unknown format fails here, before uvicorn starts
    factory = "service.logs.JsonLines" if name == "json" else "service.logs.TextLines"
    loggers = {
        logger: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
        for logger in SERVER_LOGGERS
    }
    loggers["melu.access"] = {"handlers": ["stderr"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"melu": {"()": factory}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "melu",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": loggers,
    }


def configure_logs() -> None:
    """For an app built without ``melu serve`` (tests, ``uvicorn --factory`` by hand): JSON
    lines on stderr for ``melu.access`` and ``melu.service`` unless they have handlers."""
    access = logging.getLogger("melu.access")
    for logger, level in (
        (access, logging.INFO),
        (logging.getLogger("melu.service"), logging.INFO),
    ):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonLines())
            logger.addHandler(handler)
            logger.setLevel(level)
    access.propagate = False  # a request's line is written once, here
