"""Operating the service: request ids, one JSON access-log line per request, the model
version on every response, and Prometheus metrics.

``Observe`` is the outermost ASGI middleware. It takes the ``X-Request-ID`` header (1–128
characters of ``A-Za-z0-9._:-``) or makes one, returns it, adds ``X-Model-Version`` (the
version the request was answered with, else the one being served), times the request and
writes one line to the ``melu.access`` logger::

    {"time": "...", "request_id": "...", "method": "POST", "route": "/v1/recommendations",
     "status": 200, "latency_ms": 2.91, "model_version": "3f2a...", "ratings": 5}

``route`` is the route's template (``unmatched`` for a 404), never the query string;
``ratings`` is how many ratings the request carried (``null`` where none can), never the
ratings themselves.

Metrics (``GET /metrics``, Prometheus text format, ``prometheus-client``):
``melu_http_requests_total`` and ``melu_http_request_duration_seconds`` by method, route
and status; ``melu_adaptation_seconds`` (inner loop per request, per batch for the batch
route); ``melu_request_ratings`` (ratings per person); ``melu_model_info{version,dataset}``
(1 for the served model, 0 for one swapped out); ``melu_model_reloads_total{outcome}``;
and the ``process_*`` metrics of the default registry. With ``PROMETHEUS_MULTIPROC_DIR``
set (``melu serve --workers N`` sets it), every worker writes its values there and any
worker's ``/metrics`` reports the sum over all workers (``melu_model_info`` per ``pid``);
the ``process_*`` metrics, which prometheus-client cannot merge, then come per worker as
``melu_worker_process{metric="process_resident_memory_bytes",pid="..."}`` and so on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import Loaded

access_log = logging.getLogger("melu.access")

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "melu_http_requests", "HTTP requests answered", ["method", "route", "status"]
)  # fmt: skip
LATENCY = Histogram(
    "melu_http_request_duration_seconds",
    "time from the request's arrival to the end of its response",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
ADAPTATION = Histogram(
    "melu_adaptation_seconds",
    "inner-loop (adapt) time of a request; for a batch, the whole batched pass",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
RATINGS = Histogram(
    "melu_request_ratings",
    "ratings given per person in a request",
    ["route"],
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000),
)
MODEL = Gauge(
    "melu_model_info",
    "the served model bundle: 1 for the one serving, 0 for one swapped out",
    ["version", "dataset"],
    multiprocess_mode="liveall",
)
WORKER_PROCESS = Gauge(
    "melu_worker_process",
    "each worker's process_* metrics (multiprocess mode only), sampled every few seconds",
    ["metric"],
    multiprocess_mode="liveall",
)
RELOADS = Counter(
    "melu_model_reloads", "reloads of a changed bundle, by outcome (swapped, refused)", ["outcome"]
)


def model_changed(previous: Loaded | None, new: Loaded, outcome: str) -> None:
    """``ModelSlot.on_swap``: keep ``melu_model_info`` and the reload counter current."""
    if outcome != "loaded":
        RELOADS.labels(outcome).inc()
    if previous is not None and previous.version != new.version:
        MODEL.labels(previous.version, previous.dataset).set(0)
    MODEL.labels(new.version, new.dataset).set(1)


def observe_request(scope: Scope, route: str, ratings: list[int], adapt_seconds: float) -> None:
    """What a model route tells the middleware and the metrics about its request."""
    scope["melu.ratings"] = sum(ratings)
    for n in ratings:
        RATINGS.labels(route).observe(n)
    if adapt_seconds > 0:
        ADAPTATION.labels(route).observe(adapt_seconds)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


async def sample_worker_process(interval: float = 5.0) -> None:
    """Multiprocess mode: copy this worker's ``process_*`` metrics (resident memory, CPU
    seconds, open fds, ...) into ``melu_worker_process{metric,pid}`` every ``interval``
    seconds, since prometheus-client cannot merge the process collector over workers."""
    collector = ProcessCollector(registry=None)
    while True:
        for family in collector.collect():
            for sample in family.samples:
                WORKER_PROCESS.labels(sample.name).set(sample.value)
        await asyncio.sleep(interval)


def metrics_body() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of all workers in multiprocess mode."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JsonLines(logging.Formatter):
    """``melu.service`` events (reloads, warm-up failures) as JSON lines, like the access log."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logs() -> None:
    """JSON lines on stderr for ``melu.access`` (one per request) and ``melu.service``
    (warnings and errors), unless the host application configured handlers for them."""
    for logger, formatter, level in (
        (access_log, logging.Formatter("%(message)s"), logging.INFO),
        (logging.getLogger("melu.service"), JsonLines(), logging.WARNING),
    ):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.setLevel(level)
    access_log.propagate = False  # a request's line is written once, here


class Observe:
    """ASGI middleware: request id, model version header, access log line, HTTP metrics.

    ``current_version()`` names the model being served (for responses no model computed).
    """

    def __init__(self, app: ASGIApp, current_version: Any, log: bool = True) -> None:
        self.app = app
        self.current_version = current_version
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope["melu.request_id"] = request_id
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                version = scope.get("melu.model") or self.current_version() or "none"
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-model-version", version.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            labels = (method, route, str(status))
            REQUESTS.labels(*labels).inc()
            LATENCY.labels(*labels).observe(seconds)
            if self.log:
                line = {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": status,
                    "latency_ms": round(seconds * 1e3, 3),
                    "model_version": scope.get("melu.model") or self.current_version(),
                    "ratings": scope.get("melu.ratings"),
                }
                access_log.info(json.dumps(line))
