"""Slow or oversized clients against a real ``melu serve`` process over real sockets.

A client that stalls mid-headers or mid-body is answered 408 and cut off after
``MELU_READ_TIMEOUT``; too many or too large headers get 431; ordinary keep-alive clients
are unaffected. A bad ``MELU_*`` value stops ``melu serve`` with one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["service_fixtures"]  # bundle_path

READ_TIMEOUT = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers, then content-length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.fixture(scope="module")
def server(bundle_path: Path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "MELU_READ_TIMEOUT": str(READ_TIMEOUT), "MELU_MAX_HEADERS": "50"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "melu", "serve", "--model", str(bundle_path), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("melu serve did not start") from None
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; (everything read, seconds taken)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def test_a_client_stalling_in_its_headers_gets_408_and_is_cut_off(server: int) -> None:
    reply, seconds = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert reply.startswith(b"HTTP/1.1 408")
    assert READ_TIMEOUT * 0.9 <= seconds < READ_TIMEOUT + 5


def test_a_client_stalling_in_its_body_gets_408(server: int) -> None:
    head = b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    reply, seconds = exchange(server, head + b'Content-Length: 100\r\n\r\n{"user": ')
    assert reply.startswith(b"HTTP/1.1 408") and seconds < READ_TIMEOUT + 5


def test_a_silent_connection_is_closed(server: int) -> None:
    reply, seconds = exchange(server, b"")
    assert READ_TIMEOUT * 0.9 <= seconds < READ_TIMEOUT + 5
    assert reply.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 1_000_000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))],
    ids=["one 1 MB header", "10,000 headers"],
)
def test_oversized_headers_get_431(server: int, headers: bytes) -> None:
    reply, _ = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431")


def test_keep_alive_clients_are_unaffected(server: int) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(READ_TIMEOUT * 1.5)  # idle longer than the read timeout, then reuse


def test_a_bad_environment_value_is_one_line(bundle_path: Path) -> None:
    env = {**os.environ, "MELU_READ_TIMEOUT": "soon"}
    done = subprocess.run(
        [sys.executable, "-m", "melu", "serve", "--model", str(bundle_path), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "MELU_READ_TIMEOUT='soon'" in done.stderr
