"""Bounded HTTP connections: a read timeout and header limits on uvicorn's httptools parser.

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

It is a module-level class that reads its limits from the environment once, so
``uvicorn --workers N`` can start it in every worker process (``http=`` takes the class).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import ConnectionLimits, from_env

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@functools.cache
def limits() -> ConnectionLimits:
    """The limits from ``MELU_*`` environment variables, read once per process."""
    return from_env(ConnectionLimits)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a read timeout and bounded headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self._read_timer: asyncio.TimerHandle | None = None
        self._header_count = 0
        self._header_bytes = 0
        self._refused = False

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
        super().data_received(data)

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

    def _count(self, size: int, headers: int) -> None:
        self._header_count += headers
        self._header_bytes += size
        too_many = self._header_count > self.limits.max_headers
        if not self._refused and (too_many or self._header_bytes > self.limits.max_header_bytes):
            what = "too many headers" if too_many else "headers too large"
            self._refuse(431, f"{what} (limits: MELU_MAX_HEADERS, MELU_MAX_HEADER_BYTES)")

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.limits.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        started = self.cycle is not None and self.cycle.response_started
        if started:
            self.transport.close()
        else:
            self._refuse(408, "request not received in time (limit: MELU_READ_TIMEOUT)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a plain-text ``message`` and close the connection."""
        self._refused = True
        self._disarm()
        body = message.encode("ascii")
        head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
        self.transport.write(
            head + b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        self.transport.close()
