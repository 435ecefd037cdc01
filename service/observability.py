"""Operating the service: request ids, one JSON access-log line per request, the model
version on every response, and Prometheus metrics.

``Observe`` is the outermost ASGI middleware. It takes the ``X-Request-ID`` header (1–128
characters of ``A-Za-z0-9._:-``) or makes one, returns it, adds ``X-Model-Version`` (the
version the request was answered with, else the one being served), times the request and
writes one line to the ``melu.access`` logger::

    {"time": "...", "request_id": "...", "method": "POST", "route": "/v1/recommendations",
     "status": 200, "latency_ms": 2.91, "model_version": "3f2a...", "ratings": 5}

``route`` is the route's template (``/openapi.json`` and the ``/docs`` assets included;
``unmatched`` for a 404 or a request refused before routing), never the query string;
``ratings`` is how many ratings the request carried (``null`` where none can), never the
ratings themselves. ``status`` is what the client got: a request refused by the
connection layer (400, 408, 431, ``service.protocol``) is logged and counted once with
that status; one whose client went away before any answer is ``499`` (nginx's "client
closed request"); only an error inside the app is a 500.

Metrics (``GET /metrics``, Prometheus text format, ``prometheus-client``):
``melu_http_requests_total`` and ``melu_http_request_duration_seconds`` by method, route
and status; ``melu_adaptation_seconds`` (inner loop per request, per batch for the batch
route); ``melu_request_ratings`` (ratings per person); ``melu_model_info{version,dataset}``
(1 for the served model, 0 for one swapped out); ``melu_model_reloads_total{outcome}``;
``melu_batch_requests`` and ``melu_batch_queue_wait_seconds`` (declared with the model
thread, ``service.batching``); and the ``process_*`` metrics of the default registry. No ``*_created`` series.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``melu serve --workers N`` sets it) it is
prometheus-client's documented multiprocess mode: every worker writes its values there and
any worker's ``/metrics`` is a ``MultiProcessCollector`` over them, so counters and
histograms are the sums over all workers and ``melu_model_info`` comes per live ``pid``
(the files of a worker that died are dropped, ``mark_process_dead``, before collecting).
The process collector cannot be merged, so each worker samples its own process into
typed multiprocess metrics: ``melu_worker_resident_memory_bytes{pid}`` and
``melu_worker_open_fds{pid}`` (gauges, live workers only) and
``melu_worker_cpu_seconds_total`` (a counter, summed over workers).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from service.deps import Loaded

access_log = logging.getLogger("melu.access")
disable_created_metrics()  # no *_created series: 32 lines of noise per scrape

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


@functools.cache
def worker_metrics() -> tuple[Gauge, Gauge, Counter]:
    """Multiprocess mode only: per-worker memory and fds (gauges), CPU seconds (counter)."""
    return (
        Gauge(
            "melu_worker_resident_memory_bytes",
            "resident memory of each live worker process",
            multiprocess_mode="liveall",
        ),
        Gauge(
            "melu_worker_open_fds",
            "open file descriptors of each live worker process",
            multiprocess_mode="liveall",
        ),
        Counter("melu_worker_cpu_seconds", "CPU seconds used by the worker processes"),
    )


async def sample_worker_process(interval: float = 5.0) -> None:
    """Multiprocess mode: copy this worker's resident memory, open fds and CPU time into
    ``worker_metrics()`` every ``interval`` seconds (prometheus-client's process collector
    cannot be merged over workers)."""
    memory, fds, cpu = worker_metrics()
    collector = ProcessCollector(registry=None)
    cpu_seen = 0.0
    while True:
        values = {s.name: s.value for f in collector.collect() for s in f.samples}
        memory.set(values.get("process_resident_memory_bytes", 0.0))
        fds.set(values.get("process_open_fds", 0.0))
        cpu_now = values.get("process_cpu_seconds_total", cpu_seen)
        cpu.inc(max(cpu_now - cpu_seen, 0.0))
        cpu_seen = cpu_now
        await asyncio.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(folder: Path) -> list[int]:
    """``mark_process_dead`` for every pid whose live-gauge files remain but whose process
    is gone (a worker SIGKILLed and replaced); returns those pids."""
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for path in folder.glob("gauge_live*_*.db"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit() and not _alive(int(tail)):
            dead.add(int(tail))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    return sorted(dead)


def metrics_body() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of all workers in multiprocess mode."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        forget_dead_workers(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


ACCESS_LOG = {"on": True}  # MELU_ACCESS_LOG, set by the app; read by the connection layer


def record(
    method: str | None, route: str, status: int, seconds: float, log: bool, **line: Any
) -> None:
    """Count one answered request and, if ``log``, write its access line (``line``:
    request_id, model_version, ratings)."""
    labels = (method or "-", route, str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)
    if log:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": line.get("request_id") or uuid.uuid4().hex,
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(seconds * 1e3, 3),
            "model_version": line.get("model_version"),
            "ratings": line.get("ratings"),
        }
        access_log.info(json.dumps(entry), extra={"access": entry})


def record_refusal(status: int, method: str | None, seconds: float) -> None:
    """A request refused by ``service.protocol`` before it reached the app (400/408/431)."""
    record(method, "unmatched", status, seconds, log=ACCESS_LOG["on"])


def route_of(scope: Scope, root_path: str) -> str:
    """The template of the route that answered (FastAPI's ``route`` in the scope, else the
    first of the app's routes that matches: ``/openapi.json``, ``/docs``, static mounts).
    ``root_path`` is the scope's before routing (a mount changes it)."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    router = getattr(scope.get("app"), "router", None)
    probe = {**scope, "root_path": root_path}
    for candidate in getattr(router, "routes", ()):
        match, child = candidate.matches(probe)
        path = getattr(child.get("route"), "path", None) or getattr(candidate, "path", None)
        if match != Match.NONE and path:
            return str(path)
    return "unmatched"


class Observe:
    """ASGI middleware: request id, model version header, access log line, HTTP metrics.

    ``current_version()`` names the model being served (for responses no model computed).
    """

    def __init__(self, app: ASGIApp, current_version: Any, log: bool = True) -> None:
        self.app = app
        self.current_version = current_version
        self.log = log
        ACCESS_LOG["on"] = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        root_path = scope.get("root_path", "")
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope["melu.request_id"] = request_id
        status: int | None = None  # until the answer starts

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

        failed = True
        try:
            await self.app(scope, receive, send_with_headers)
            failed = False
        finally:
            if status is None and not failed and scope.get("melu.refused"):
                pass  # refused by the connection layer, which counted and logged it
            else:
                unanswered = 500 if failed else 499  # an app error, or the client went away
                record(
                    scope["method"],
                    route_of(scope, root_path),
                    unanswered if status is None else status,
                    time.perf_counter() - start,
                    log=self.log,
                    request_id=request_id,
                    model_version=scope.get("melu.model") or self.current_version(),
                    ratings=scope.get("melu.ratings"),
                )
