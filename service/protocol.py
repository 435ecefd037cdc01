"""Bounded HTTP connections: a read timeout, header limits and API-shaped connection errors
on uvicorn's httptools parser.

uvicorn bounds an *idle* keep-alive connection but not one that is slow on purpose: a
client that sends half its headers (or half its body) and stalls keeps its connection,
and httptools accepts megabytes of headers in any number. ``GuardedHttpToolsProtocol``
adds what a reverse proxy would:

- a **read timeout** (``MELU_READ_TIMEOUT`` seconds, default 10): from the first byte of a
  request until its body is complete. A request still incomplete then gets ``408 Request
  Timeout`` and the connection is closed. The app's own work is not limited by it.
- **header limits**: at most ``MELU_MAX_HEADERS`` headers (default 100) and
  ``MELU_MAX_HEADER_BYTES`` bytes of request line plus headers (default 32 KiB); more gets
  ``431 Request Header Fields Too Large`` and the connection is closed.
- **malformed requests** (bytes that are not HTTP, ``Content-Length`` with
  ``Transfer-Encoding``) get ``400`` naming the parser's complaint.

Every one of these answers is JSON in the API's error shape (``service.wire``), is counted
in ``melu_http_requests_total`` and written to the access log with its real status. A
request that arrived complete before the fault (pipelined before garbage) is answered
first, in order; the refusal follows and the connection closes. A client that half-closes
(``shutdown(SHUT_WR)``) after a complete request still gets its response (HTTP allows it;
curl and proxies do it); the connection closes once everything asked for is answered.

It is a module-level class that reads its limits from the environment once, so
``uvicorn --workers N`` can start it in every worker process (``http=`` takes the class).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.settings import ConnectionLimits, from_env
from service.wire import error_body

REASONS = {
    400: (b"Bad Request", ["request"], "malformed_request"),
    408: (b"Request Timeout", ["request"], "request_timeout"),
    431: (b"Request Header Fields Too Large", ["headers"], "headers_too_large"),
}


@functools.cache
def limits() -> ConnectionLimits:
    """The limits from ``MELU_*`` environment variables, read once per process."""
    return from_env(ConnectionLimits)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read timeout, bounded headers, JSON refusals
    that wait for the answers in flight, and half-closed clients answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self._read_timer: asyncio.TimerHandle | None = None
        self._first_byte = 0.0
        self._header_count = 0
        self._header_bytes = 0
        self._refused = False  # no more bytes are read: a refusal is sent or pending
        self._pending: tuple[int, str, str | None] | None = None  # waits for answers in flight
        self._running: RequestResponseCycle | None = None  # the request being answered
        self._eof = False  # the client half-closed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._read_timer is None and not self.transport.is_closing():
            self._arm()  # a new request on a kept-alive connection
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {str(exc)[:200]}")

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client half-closed: keep writing while a complete request is unanswered."""
        self._eof = True
        self._disarm()
        if self._answering():
            return True  # the transport stays open for our response
        return None  # nothing more can come: asyncio closes the connection

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self._answering() or self.transport.is_closing():
            return
        if self._pending is not None:
            self._write_refusal(*self._pending)
        elif self._eof:
            self.transport.close()

    def on_message_begin(self) -> None:
        self._header_count, self._header_bytes = 0, 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), headers=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, headers=1)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused and self.cycle is not None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()  # the request is in: the app's work is not bounded here
        if not self._refused and self.cycle is not None:
            super().on_message_complete()

    def _answering(self) -> bool:
        """Whether a complete request is queued or being answered."""
        running = self._running
        busy = running is not None and not running.response_complete and not running.more_body
        return busy or bool(self.pipeline)

    def _count(self, size: int, headers: int) -> None:
        self._header_count += headers
        self._header_bytes += size
        too_many = self._header_count > self.limits.max_headers
        if not self._refused and (too_many or self._header_bytes > self.limits.max_header_bytes):
            what = "too many headers" if too_many else "headers too large"
            self._refuse(431, f"{what} (limits: MELU_MAX_HEADERS, MELU_MAX_HEADER_BYTES)")

    def _arm(self) -> None:
        self._disarm()
        self._first_byte = self.loop.time()
        self._read_timer = self.loop.call_later(self.limits.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self._refuse(408, "request not received in time (limit: MELU_READ_TIMEOUT)")

    def _refuse(self, status: int, message: str) -> None:
        """Stop reading; answer ``status`` now, or after the complete requests before it."""
        self._refused = True
        self._disarm()
        incomplete = self.cycle if self.cycle is not None and self.cycle.more_body else None
        method = None
        if incomplete is not None:  # the request being received: it is never answered
            method = incomplete.scope.get("method")
            scope: dict[str, Any] = incomplete.scope  # type: ignore[assignment]
            scope["melu.refused"] = status  # its app call does not log it again
            self.pipeline = deque(e for e in self.pipeline if e[0] is not incomplete)
        if self._answering():
            self._pending = (status, message, method)
        else:
            self._write_refusal(status, message, method)

    def _write_refusal(self, status: int, message: str, method: str | None) -> None:
        """Write the JSON error answer, count and log it, and close the connection."""
        reason, loc, kind = REASONS[status]
        body = error_body(list(loc), message, kind)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, len(body)) + body
        )
        self.transport.close()
        from service.observability import record_refusal  # workers only: not the supervisor

        record_refusal(status, method, self.loop.time() - self._first_byte)
