"""Serving latency and throughput on an ML-100K bundle (1682 candidates, 5 ratings/request).

(a) in-process ``Recommender.recommend`` p50/p99 with 1 torch thread and aten ops per
    request; baseline in the same run, interleaved request by request: the plain path
    (``precompute_items=False``: every candidate embedded per request, the inner step by
    autograd) — ``x`` is how many times faster the served path is.
(b) HTTP p50/p99 for one client on 127.0.0.1 against ``melu serve`` (1 worker); the ratio
    is HTTP over in-process p50 (what the web stack adds).
(c) throughput and error count with concurrent clients against ``melu serve --workers 2``
    for ``--duration`` seconds; the ratio is against one client's sequential rate from (b).
(d) batch scoring, users/s for ``--batch`` users (default 256): ``recommend_many`` (one
    batched adaptation) vs ``recommend`` one at a time, in-process, same run, 1 torch thread
    each; then over HTTP, one ``POST /v1/recommendations/batch``
    vs that many ``POST /v1/recommendations`` on one keep-alive connection (1 worker).

    python benchmarks/service.py --model runs/ml100k [--device cuda] [--only a] [--best-of 10]

Targets (2-core CPU): (a) p50 <= 1.5 ms; (b) p50 <= 10 ms, p99 <= 25 ms; (c) >= 150 req/s,
0 errors; (d) batch >= 5x one-at-a-time users/s for 256 users. Each request is a different user (features and rated items drawn with a seed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu.serving import Recommender, Request

GENDERS = ("F", "M")
OCCUPATIONS = ("student", "engineer", "artist", "programmer", "other")


def make_requests(
    recommender: Recommender, count: int, seed: int = 0, distinct: bool = False
) -> list[dict[str, Any]]:
    """``count`` request bodies. ``distinct``: no two users share their features (each
    also gets a zip code, occupations and zips cycle through the model's known values), so
    a batch cannot share the MLP's pass over the catalog between people with equal ones."""
    rng = np.random.default_rng(seed)
    catalog = recommender.catalog  # most rated first (pandas' order, as the old frame had)
    popular = catalog.item_ids[pd.Series(catalog.n_ratings).sort_values(ascending=False).index]
    known = {f.name: f.vocab for f in recommender.bundle.features.user_fields}
    out = []
    for i in range(count):
        items = rng.choice(popular[:500], size=5, replace=False)
        user = {
            "gender": GENDERS[i % 2],
            "age": int(rng.integers(15, 65)),
            "occupation": OCCUPATIONS[i % len(OCCUPATIONS)],
        }
        if distinct:  # (occupation, zip) pairs repeat only after lcm(len, len) > count users
            user["occupation"] = known["occupation"][i % len(known["occupation"])]
            user["zip"] = known["zip"][(i // len(known["occupation"])) % len(known["zip"])]
        out.append(
            {
                "user": user,
                "ratings": [{"item_id": int(j), "rating": int(rng.integers(1, 6))} for j in items],
                "k": 10,
            }
        )
    return out


def distinct_users(recommender: Recommender, bodies: list[dict[str, Any]]) -> int:
    """How many different sets of user features ``bodies`` hold (as the model sees them)."""
    features = recommender.bundle.features
    return len({tuple(features.user_indices(b["user"]).values()) for b in bodies})


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_in_process(
    recommenders: list[Recommender], bodies: list[dict[str, Any]], best_of: int = 1
) -> list[list[float]]:
    """Seconds per ``recommend`` call of each recommender, the same requests, interleaved
    (request i by every recommender in turn, the order rotating) so load drifts hit all
    sides alike; 20 warm-up calls each first. ``best_of`` > 1: each request's fastest of
    that many rounds (what a busy machine's preemptions leave of it). Returns the
    wall-clock lists, then the calling thread's CPU-time lists."""
    calls = [
        (b["user"], [(r["item_id"], float(r["rating"])) for r in b["ratings"]]) for b in bodies
    ]
    for recommender in recommenders:
        for user, ratings in calls[:20]:
            recommender.recommend(user, ratings, k=10)
    sides = len(recommenders)
    times = [[float("inf")] * len(calls) for _ in recommenders]
    cpu = [[float("inf")] * len(calls) for _ in recommenders]
    for _ in range(best_of):
        for i, (user, ratings) in enumerate(calls):
            for j in range(sides):
                side = (i + j) % sides
                start, start_cpu = time.perf_counter(), time.thread_time()
                recommenders[side].recommend(user, ratings, k=10)
                cpu[side][i] = min(cpu[side][i], time.thread_time() - start_cpu)
                times[side][i] = min(times[side][i], time.perf_counter() - start)
    return times + cpu


def aten_ops(recommender: Recommender, bodies: list[dict[str, Any]]) -> float:
    """aten ops per ``recommend`` call (torch.profiler, mean over 20 requests)."""
    from torch.profiler import ProfilerActivity, profile

    calls = [
        (b["user"], [(r["item_id"], float(r["rating"])) for r in b["ratings"]]) for b in bodies
    ]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for user, ratings in calls[:20]:
            recommender.recommend(user, ratings, k=10)
    events = prof.key_averages()
    return sum(e.count for e in events if e.key.startswith("aten::")) / len(calls[:20])


def bench_in_process(
    model: Path, device: str, bodies: list[dict[str, Any]], best_of: int = 1
) -> float:
    torch.set_num_threads(1)
    fast = Recommender.from_bundle(model, device, onboarding=False, threads=1)
    slow = Recommender.from_bundle(
        model, device, onboarding=False, threads=1, precompute_items=False
    )
    served, plain, served_cpu, plain_cpu = time_in_process([fast, slow], bodies, best_of)
    kernel = getattr(fast, "kernel", "batched")  # (older trees: the batched kernel)
    fast_p50, fast_p99 = percentiles(served)
    slow_p50, slow_p99 = percentiles(plain)
    best = f", each the best of {best_of}" if best_of > 1 else ""
    print(f"(a) in-process recommend() on {device}, 1 torch thread, {len(bodies)} requests{best}:")
    print(
        f"    served path   p50 {fast_p50:6.2f} ms  p99 {fast_p99:6.2f} ms  "
        f"{aten_ops(fast, bodies):5.0f} aten ops/request  (cached catalog, {kernel} step)"
    )
    print(
        f"    plain path    p50 {slow_p50:6.2f} ms  p99 {slow_p99:6.2f} ms  "
        f"{aten_ops(slow, bodies):5.0f} aten ops/request  (embed per request, autograd step)"
    )
    print(
        f"    thread CPU time p50: served {percentiles(served_cpu)[0]:6.2f} ms, "
        f"plain {percentiles(plain_cpu)[0]:6.2f} ms"
    )
    print(
        f"    x{slow_p50 / fast_p50:.2f} faster than the plain path at p50 (target p50 <= 1.5 ms)"
    )
    return fast_p50


class Server:
    """``melu serve`` in a subprocess, from ``tree``'s code when given (an exported commit,
    ``benchmarks/service_load.py``), else this checkout's; ready (``/ready``) on enter,
    stopped on exit. ``env``: extra environment (it may override MELU_TORCH_THREADS)."""

    def __init__(
        self, model: Path, port: int, workers: int = 1, tree: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.port = port
        env = {**os.environ, "MELU_TORCH_THREADS": "1", **(env or {}), "OMP_NUM_THREADS": "1"}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        command = [sys.executable, "-m", "melu", "serve", "--model", str(model)]
        command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
        self.process = subprocess.Popen(  # the JSON access log (stderr) is written, not shown
            command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"melu serve exited with {self.process.returncode}")
            try:
                if self.get("/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("melu serve was not ready in 180 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    headers = {"content-type": "application/json"}
    connection.request("POST", "/v1/recommendations", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def bench_http_one_client(model: Path, port: int, bodies: list[dict[str, Any]]) -> float:
    payloads = [json.dumps(b).encode() for b in bodies]
    with Server(model, port, workers=1):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for payload in payloads[:20]:
            post(connection, payload)
        times, errors = [], 0
        for payload in payloads:
            start = time.perf_counter()
            errors += post(connection, payload) != 200
            times.append(time.perf_counter() - start)
    p50, p99 = percentiles(times)
    print(f"(b) HTTP, one client, keep-alive, `melu serve` 1 worker, {len(payloads)} requests:")
    print(f"    p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}")
    print("    (target p50 <= 10 ms, p99 <= 25 ms)")
    return float(np.mean(times))


def bench_throughput(
    model: Path, port: int, bodies: list[dict[str, Any]], clients: int, duration: float
) -> tuple[float, int]:
    payloads = [json.dumps(b).encode() for b in bodies]
    counts = [0] * clients
    errors = [0] * clients
    stop = threading.Event()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = index
        while not stop.is_set():
            try:
                ok = post(connection, payloads[i % len(payloads)]) == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            counts[index] += ok
            errors[index] += not ok
            i += clients

    with Server(model, port, workers=2):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(duration)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    rate = sum(counts) / elapsed
    return rate, sum(errors)


def as_requests(bodies: list[dict[str, Any]]) -> list[Request]:
    return [
        Request(b["user"], [(r["item_id"], float(r["rating"])) for r in b["ratings"]], b["k"])
        for b in bodies
    ]


def best_of(repeats: int, work: Any) -> float:
    """The fastest of ``repeats`` timed calls of ``work()`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_batch(model: Path, port: int, bodies: list[dict[str, Any]], repeats: int = 3) -> None:
    n = len(bodies)
    requests = as_requests(bodies)
    print(f"(d) batch vs one at a time, {n} users (5 ratings each, k = 10), best of {repeats}:")
    for threads in (1,):  # as served: 1 torch thread per worker (2 oversubscribe a busy box)
        torch.set_num_threads(threads)
        rec = Recommender.from_bundle(model, onboarding=False, threads=threads)
        if hasattr(rec.bundle.features, "user_indices"):  # (older trees cannot tell)
            print(f"    {distinct_users(rec, bodies)} different sets of user features")
        rec.recommend_many(requests[:16])  # warm-up
        one = best_of(
            repeats, lambda r=rec: [r.recommend(q.user, q.ratings, q.k) for q in requests]
        )
        many = best_of(repeats, lambda r=rec: r.recommend_many(requests))
        print(
            f"    in-process, {threads} torch thread(s): one at a time {n / one:7.0f} users/s, "
            f"batch {n / many:7.0f} users/s  (x{one / many:.2f})"
        )
    single = [json.dumps(b).encode() for b in bodies]
    batch = json.dumps({"users": bodies}).encode()
    headers = {"content-type": "application/json"}
    with Server(model, port, workers=1):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def one_by_one() -> None:
            for payload in single:
                assert post(connection, payload) == 200

        def together() -> None:
            connection.request("POST", "/v1/recommendations/batch", body=batch, headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status

        together()
        one = best_of(repeats, one_by_one)
        many = best_of(repeats, together)
    print(
        f"    HTTP, 1 worker, 1 torch thread: {n} POST /v1/recommendations {n / one:7.0f} users/s, "
        f"one POST .../batch {n / many:7.0f} users/s  (x{one / many:.2f}; target >= 5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/ml100k"))
    parser.add_argument("--device", default="cpu", help="device for (a), e.g. cuda")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--batch", type=int, default=256, help="users in (d)")
    parser.add_argument(
        "--distinct", action="store_true", help="(d): no two users with the same features"
    )
    parser.add_argument("--only", choices=["a", "b", "c", "d"], default=None)
    parser.add_argument(
        "--best-of", type=int, default=1, help="(a): each request's fastest of N rounds"
    )
    args = parser.parse_args()
    recommender = Recommender.from_bundle(args.model, onboarding=False)
    print(f"bundle {args.model}: {recommender.n_items} candidates, {recommender.steps} steps")
    bodies = make_requests(recommender, args.requests)
    if args.only in (None, "a"):
        bench_in_process(args.model, args.device, bodies, args.best_of)
    single_mean = None
    if args.only in (None, "b"):
        single_mean = bench_http_one_client(args.model, args.port, bodies)
    if args.only in (None, "d"):
        bodies_d = make_requests(recommender, args.batch, seed=1, distinct=args.distinct)
        bench_batch(args.model, args.port + 2, bodies_d)
    if args.only in (None, "c"):
        rate, errors = bench_throughput(
            args.model, args.port + 1, bodies, args.clients, args.duration
        )
        print(
            f"(c) `melu serve --workers 2`, {args.clients} concurrent clients, "
            f"{args.duration:g} s: {rate:.0f} req/s, {errors} errors"
        )
        if single_mean:
            print(
                f"    x{rate * single_mean:.2f} one client's sequential rate (target >= 150 req/s)"
            )


if __name__ == "__main__":
    main()
