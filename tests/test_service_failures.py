"""The hostile run's probes (issue 16, classes 1–3) against a real ``melu serve`` process
over real sockets: HEAD on every GET route, connection-level answers, pipelining and
half-closed clients, and a batch that asks for too much. Logs and /metrics are read back
(the metrics with prometheus-client's parser) to check each request was counted with the
status the client really got."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_fixtures import free_port

pytest_plugins = ["service_fixtures"]  # bundle_path

READ_TIMEOUT = 1.0
HEAD_PATHS = ["/", "/health", "/ready", "/metrics", "/v1/items", "/v1/model", "/v1/onboarding"]
HEAD_PATHS += ["/docs", "/openapi.json"]


@dataclass
class Server:
    port: int
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        """Every line the server wrote to stderr, each parsed as JSON (fails otherwise)."""
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]


def exchange(port: int, data: bytes, half_close: bool = False, wait: float = 10.0) -> bytes:
    """Send ``data`` (then ``shutdown(SHUT_WR)`` if ``half_close``); read until closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of HTTP/1.1 responses (each with content-length)."""
    out = []
    while raw:
        head, raw = raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        length = int(headers.get("content-length", 0))
        out.append((int(status_line.split()[1]), headers, raw[:length]))
        raw = raw[length:]
    return out


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict, bytes]:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ((status, headers, content),) = responses(exchange(port, head.encode() + data))
    return status, headers, content


def counts(port: int) -> dict[tuple[str, str, str], float]:
    """melu_http_requests_total by (method, route, status), parsed by prometheus-client."""
    _, _, text = request(port, "GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["melu_http_requests"].samples
        if s.name == "melu_http_requests_total"
    }


@pytest.fixture(scope="module")
def server(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "stderr.log"
    env = {**os.environ, "MELU_READ_TIMEOUT": str(READ_TIMEOUT), "MELU_RELOAD_INTERVAL": "0"}
    command = [sys.executable, "-m", "melu", "serve", "--model", str(bundle_path)]
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            if request(port, "GET", "/ready")[0] == 200:
                break
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("melu serve did not become ready:\n" + log.read_text())
        time.sleep(0.1)
    yield Server(port, log)
    proc.terminate()
    proc.wait(timeout=30)


# ---------------------------------------------------------------- class 1: HEAD
def test_head_answers_like_get_and_is_counted_with_its_real_status(server: Server) -> None:
    for path in HEAD_PATHS:
        got = request(server.port, "GET", path)
        head_request = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = exchange(server.port, head_request.encode())
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 %d" % got[0]) and got[0] in (200, 503), path
        assert body == b"", path  # no body bytes, whatever content-length says
        if path not in ("/metrics",):  # its size changes between the two calls
            assert f"content-length: {len(got[2])}".encode() in head, path
    text = server.log.read_text()
    assert "Traceback" not in text and "Exception" not in text and "shorter than" not in text
    heads = {x["route"]: x["status"] for x in server.lines() if x.get("method") == "HEAD"}
    assert set(heads) == set(HEAD_PATHS) and set(heads.values()) == {200}
    by_route = counts(server.port)
    for path in HEAD_PATHS:
        assert by_route.get(("HEAD", path, "200"), 0) >= 1, path
    assert not [k for k in by_route if k[2] == "500"]


# ---------------------------------------------------------------- class 2: connections
SLOW = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
MANY = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
SMUGGLE = (
    b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("data", "status", "kind"),
    [
        (SLOW, 408, "request_timeout"),
        (MANY + b"\r\n", 431, "headers_too_large"),
        (SMUGGLE, 400, "malformed_request"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed_request"),
    ],
    ids=["slow client", "101 headers", "CL+TE smuggling", "garbage"],
)
def test_connection_level_answers_are_json(
    server: Server, data: bytes, status: int, kind: str
) -> None:
    ((got, headers, body),) = responses(exchange(server.port, data))
    assert got == status and headers["content-type"] == "application/json"
    (detail,) = json.loads(body)["detail"]
    assert detail["type"] == kind and detail["msg"] and detail["loc"]
    if status != 400:
        assert "MELU_" in detail["msg"]  # names the setting


def test_requests_pipelined_before_garbage_are_answered_in_order(server: Server) -> None:
    data = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/items?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    got = responses(exchange(server.port, data + b"GARBAGE\r\n\r\n"))
    assert [g[0] for g in got] == [200, 200, 400]
    assert json.loads(got[0][2])["status"] == "ok" and json.loads(got[1][2])["total"] > 0
    assert json.loads(got[2][2])["detail"][0]["type"] == "malformed_request"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_half_closed_client_gets_its_response(server: Server, method: str) -> None:
    if method == "GET":
        data = b"GET /v1/items?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        body = json.dumps({"ratings": [{"item_id": 50, "rating": 5}], "k": 3}).encode()
        data = b"POST /v1/recommendations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        data += b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    ((status, _, content),) = responses(exchange(server.port, data, half_close=True))
    assert status == 200 and len(json.loads(content)["items"]) in (2, 3)


def test_timed_out_requests_are_logged_and_counted_as_408_not_500(server: Server) -> None:
    head = b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    stalled = head + b'X-Request-ID: stalled-body\r\nContent-Length: 100\r\n\r\n{"user": '
    assert exchange(server.port, stalled).startswith(b"HTTP/1.1 408")
    gone = head + b'Content-Length: 100\r\n\r\n{"user": '  # half-closes mid-body: no answer
    assert exchange(server.port, gone, half_close=True) == b""
    time.sleep(0.2)
    by_route = counts(server.port)
    assert by_route.get(("POST", "unmatched", "408"), 0) >= 1
    assert not [k for k in by_route if k[2] == "500"], by_route
    statuses = [x["status"] for x in server.lines() if x.get("method") == "POST"]
    assert 408 in statuses and 500 not in statuses


# ---------------------------------------------------------------- class 3: amplification
def test_a_batch_asking_for_too_many_items_is_refused_fast(server: Server) -> None:
    users = [{"ratings": [{"item_id": 50, "rating": 5}], "k": 1682} for _ in range(256)]
    start = time.monotonic()
    status, _, content = request(server.port, "POST", "/v1/recommendations/batch", {"users": users})
    assert status == 422 and time.monotonic() - start < 3.0
    (detail,) = json.loads(content)["detail"]
    assert detail["loc"] == ["body", "users"] and "MELU_MAX_BATCH_ITEMS" in detail["msg"]
    assert "10000" in detail["msg"] and len(content) < 2_000
    within = {"users": [{"ratings": [], "k": 1000} for _ in range(10)]}  # at the limit
    status, _, content = request(server.port, "POST", "/v1/recommendations/batch", within)
    assert status == 200 and len(json.loads(content)["results"]) == 10
