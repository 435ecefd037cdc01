"""A closed-loop HTTP load generator: C keep-alive clients POST for D seconds (asyncio, raw
sockets, one process), then one JSON line: requests/s, p50/p99 latency (ms), errors.

Each client sends its next body as soon as its previous answer has arrived (like ``wrk``);
an answer that is not a 200, or a connection that fails, is an error (the client reconnects).
Run it in its own process, so the server's CPU is not the client's:

    python benchmarks/load_client.py --port 8000 --bodies bodies.jsonl --clients 32 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np


def http_post(path: str, body: bytes) -> bytes:
    """One HTTP/1.1 keep-alive POST of a JSON ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one response (``content-length`` framed, as uvicorn sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client(
    index: int, clients: int, port: int, path: str, payloads: list[bytes], stop: float,
    out: dict[str, list],
) -> None:  # fmt: skip
    """Send ``payloads`` (from ``index``, stepping over the other clients' ones) until ``stop``."""
    i, connection = index, None
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(payloads[i % len(payloads)])
            status, body = await answer(reader)
            ok = status == 200
            if ok:
                out["answers"].append((i % len(payloads), body))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            ok, connection = False, None
        out["latency" if ok else "errors"].append(time.perf_counter() - start)
        i += clients


async def run(port: int, path: str, payloads: list[bytes], clients: int, duration: float) -> dict:
    out: dict[str, list] = {"latency": [], "errors": [], "answers": []}
    start = time.perf_counter()
    stop = start + duration
    await asyncio.gather(
        *(client(c, clients, port, path, payloads, stop, out) for c in range(clients))
    )
    elapsed = time.perf_counter() - start
    ms = np.asarray(out["latency"] or [float("nan")]) * 1e3
    first: dict[int, str] = {}
    for index, body in out["answers"]:
        first.setdefault(index, body.decode())
    return {
        "answers": first,  # each body's first answer, to compare with one-at-a-time answers
        "requests": len(out["latency"]),
        "errors": len(out["errors"]),
        "seconds": elapsed,
        "rate": len(out["latency"]) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON lines, one body each")
    parser.add_argument("--path", default="/v1/recommendations")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--answers", type=Path, help="write each body's first answer here")
    args = parser.parse_args()
    lines = args.bodies.read_text().splitlines()
    payloads = [http_post(args.path, line.encode()) for line in lines if line.strip()]
    work = run(args.port, args.path, payloads, args.clients, args.duration)
    try:
        import uvloop  # the client's own overhead, smaller

        result = uvloop.run(work)
    except ImportError:
        result = asyncio.run(work)
    answers = result.pop("answers")
    if args.answers:
        args.answers.write_text(json.dumps(answers))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
