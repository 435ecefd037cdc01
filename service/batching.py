"""One model thread per worker, and the grouping of requests that arrive together.

Every computation with the model (``POST /v1/recommendations``, ``/v1/predictions``,
``/v1/recommendations/batch``) runs on one thread of the worker, the ``ModelThread``; the
event loop awaits a future meanwhile and goes on reading, validating and answering other
requests. One thread, so torch threads never contend with each other (uvicorn's thread pool
ran up to 40 requests at once on 2 cores, each slower than alone).

Recommendations that wait for the model are grouped: the thread takes the first one
queued, then whatever else is queued, waiting for more until ``MELU_BATCH_WAIT_MS`` after
the first arrived or until ``MELU_BATCH_REQUESTS`` are together (it waits only while other
HTTP requests are in flight in the worker: a lone request is not held back), and answers the group with
one ``Recommender.recommend_many`` call (one batched adaptation, the catalog scored for
several people at once). A group of one is a plain ``recommend`` call: an idle server's
answers are the one-at-a-time ones bit for bit; a group's answers equal them up to float
rounding (the batch route's contract, tests/test_service_batching.py). A request that is
invalid (an unknown item id, ...) gets its own 422; the others of its group are answered.

``melu_batch_requests`` (a histogram of group sizes) and ``melu_batch_queue_wait_seconds``
(from a job's arrival on the queue to the start of its computation) are on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from melu.serving import InvalidInput, Recommendations, Recommender, Request

T = TypeVar("T")
log = logging.getLogger("melu.service")

GROUP_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GROUPS = Histogram(
    "melu_batch_requests",
    "recommendation requests answered by one model call (1: a plain recommend)",
    buckets=GROUP_SIZES,
)
QUEUE_WAIT = Histogram(
    "melu_batch_queue_wait_seconds",
    "time a request waited on the model thread's queue before its computation began",
    buckets=WAIT_BUCKETS,
)


@dataclass
class Job:
    """One piece of model work and where its answer goes (a future of the event loop)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    request: Request | None = None  # a recommendation (groupable) ...
    recommender: Recommender | None = None
    call: Callable[[], Any] | None = None  # ... or any other call, run alone
    queued: float = field(default_factory=time.perf_counter)

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Hand the answer (or the error) to the awaiting request, unless it went away."""

        def done() -> None:
            if self.future.done():  # cancelled: the client disconnected
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(done)


@dataclass
class InFlight:
    """How many HTTP requests the worker is handling right now, from their headers to their
    last byte (kept by ``CountInFlight``): a group waits only while others are on their way."""

    count: int = 0


class CountInFlight:
    """ASGI middleware that keeps ``in_flight.count`` (only the event loop's thread writes it)."""

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app, self.in_flight = app, in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1


class ModelThread:
    """The worker's one model thread: ``recommend`` (grouped) and ``call`` (alone).

    ``wait``: seconds a group stays open after its first request arrived (0: take only what
    is already queued); ``size``: most requests in a group (1: no grouping). ``in_flight``:
    the worker's HTTP requests in flight; when given, a group stops waiting as soon as no
    request beyond those it holds is in flight, so a lone request is answered at once
    (without it, every group waits out ``wait``).
    """

    def __init__(self, wait: float, size: int, in_flight: InFlight | None = None) -> None:
        self.wait, self.size, self.in_flight = wait, size, in_flight
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    async def recommend(self, recommender: Recommender, request: Request) -> Recommendations:
        """``recommender.recommend(request)``, computed on the model thread, maybe grouped."""
        return await self._submit(request=request, recommender=recommender)  # type: ignore[no-any-return]

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the model thread, alone (predictions, the batch route)."""
        return await self._submit(call=lambda: fn(*args))  # type: ignore[no-any-return]

    async def _submit(self, **work: Any) -> Any:
        self.start()
        loop = asyncio.get_running_loop()
        job = Job(loop, loop.create_future(), **work)
        self._queue.put(job)
        return await job.future

    def start(self) -> None:
        """Start the thread (once; the first request does if the lifespan has not)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._starting:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="melu-model", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the thread after the jobs already queued (the lifespan's end)."""
        with self._starting:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(None)
                self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            group, alone = self._collect(first)
            for job in alone:
                _run_call(job)
            if group:
                answer_group(group)
        log.debug("model thread stopped")

    def _collect(self, first: Job) -> tuple[list[Job], list[Job]]:
        """``first`` and the jobs that join it: recommendations (the group, at most
        ``size``) and other calls (run alone, before the group) taken meanwhile."""
        group, alone = ([first], []) if first.request is not None else ([], [first])
        if not group:
            return group, alone
        deadline = first.queued + self.wait
        while len(group) < self.size:
            left = deadline - time.perf_counter()
            if left > 0 and self.in_flight and self.in_flight.count <= len(group) + len(alone):
                left = 0  # nobody else on the way: take what is queued, wait no longer
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop: answer what is here, then end
                self._queue.put(None)
                break
            (group if job.request is not None else alone).append(job)
        return group, alone


def _run_call(job: Job) -> None:
    QUEUE_WAIT.observe(time.perf_counter() - job.queued)
    assert job.call is not None
    try:
        job.settle(job.call())
    except Exception as exc:  # the request's own error: its route turns it into a response
        job.settle(error=exc)


def answer_group(group: Sequence[Job]) -> None:
    """Answer a group of recommendations: one ``recommend_many`` per model (a reload may
    put two in one group), a plain ``recommend`` for a single request."""
    started = time.perf_counter()
    for job in group:
        QUEUE_WAIT.observe(started - job.queued)
    by_model: dict[int, list[Job]] = {}
    for job in group:
        by_model.setdefault(id(job.recommender), []).append(job)
    for jobs in by_model.values():
        _answer(list(jobs))


def _answer(jobs: list[Job]) -> None:
    """Answer ``jobs`` (one model) together; an invalid request gets its own error and
    leaves the group, which is answered without it."""
    while jobs:
        recommender = jobs[0].recommender
        assert recommender is not None
        try:
            answers = _compute(recommender, [j.request for j in jobs if j.request is not None])
        except InvalidInput as exc:
            if len(jobs) == 1:  # recommend's own error
                jobs[0].settle(error=exc)
                return
            bad = exc.loc[0] if exc.loc else None  # recommend_many names the request first
            if not isinstance(bad, int) or not 0 <= bad < len(jobs):
                for job in jobs:  # not one request's fault: each alone
                    _answer_alone(job)
                return
            jobs.pop(bad).settle(error=InvalidInput(exc.loc[1:], exc.value, exc.reason))
            continue
        except Exception as exc:  # not the input's fault: every request of the group fails
            for job in jobs:
                job.settle(error=exc)
            return
        GROUPS.observe(len(jobs))
        for job, answer in zip(jobs, answers, strict=True):
            job.settle(answer)
        return


def _answer_alone(job: Job) -> None:
    assert job.recommender is not None and job.request is not None
    try:
        job.settle(_compute(job.recommender, [job.request])[0])
    except Exception as exc:
        job.settle(error=exc)


def _compute(recommender: Recommender, requests: list[Request]) -> list[Recommendations]:
    """``recommend_many(requests)``; a plain ``recommend`` for one (bit-identical answers)."""
    if len(requests) == 1:
        r = requests[0]
        return [recommender.recommend(r.user, r.ratings, r.k, r.exclude_rated, r.candidates)]
    return recommender.recommend_many(requests)
