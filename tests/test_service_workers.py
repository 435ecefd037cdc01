"""``melu serve --workers 2`` as an operator runs it: metrics summed over the workers with
prometheus-client's multiprocess collectors (parsed by its own parser), a light
supervisor that holds no model, and a SIGKILLed worker dropped from ``melu_model_info``
once it is replaced."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest_plugins = ["service_fixtures"]  # bundle_path


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read().decode()


def families(port: int) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(get(port, "/metrics")[1])}


def model_pids(port: int) -> set[str]:
    """The pids listed by melu_model_info (one per live worker that loaded the model)."""
    family = families(port)["melu_model_info"]
    return {s.labels["pid"] for s in family.samples if s.value == 1}  # type: ignore[attr-defined]


GROUPING = ["--batch-wait-ms", "100", "--batch-requests", "4"]  # reach every worker


def rss_mib(pid: int | str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.fixture(scope="module")
def workers(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from service_fixtures import free_port

    port = free_port()
    env = {**os.environ, "MELU_RELOAD_INTERVAL": "0", "MELU_TORCH_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path_factory.mktemp("workers") / "stderr.log"
    command = [sys.executable, "-m", "melu", "serve", "--model", str(bundle_path)]
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--workers", "2", *GROUPING],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: len(model_pids(port)) == 2, server, log, "workers not up")
        yield server, port, log
    finally:
        server.terminate()
        server.wait(30)


def wait_for(done: object, server: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, what + "\n" + log.read_text()
        try:
            if done():  # type: ignore[operator]
                return
        except (OSError, KeyError):
            pass
        time.sleep(0.2)


def test_metrics_add_up_over_workers_as_typed_multiprocess_metrics(workers: tuple) -> None:
    _, port, _ = workers
    for _ in range(12):  # new connections: spread over the workers
        assert get(port, "/v1/items?limit=1")[0] == 200
    for _ in range(4):  # whichever worker answers reports both
        found = families(port)
        requests = found["melu_http_requests"]
        (count,) = [
            s.value
            for s in requests.samples  # type: ignore[attr-defined]
            if s.name == "melu_http_requests_total" and s.labels["route"] == "/v1/items"
        ]
        assert count == 12.0
        samples = [s for f in found.values() for s in f.samples]  # type: ignore[attr-defined]
        assert not [s for s in samples if "metric" in s.labels]  # no metric names in labels
        assert not [s for s in samples if s.name.endswith("_created")]
        assert found["melu_worker_cpu_seconds"].type == "counter"  # type: ignore[attr-defined]
        memory = found["melu_worker_resident_memory_bytes"]
        assert memory.type == "gauge"  # type: ignore[attr-defined]
        assert len({s.labels["pid"] for s in memory.samples}) == 2  # type: ignore[attr-defined]


def post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/recommendations", body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def test_the_grouping_flags_reach_the_workers_and_groups_add_up(workers: tuple) -> None:
    _, port, _ = workers
    bodies = [
        json.dumps({"user": {"age": 20 + i}, "ratings": [{"item_id": 50, "rating": 5}], "k": 5})
        for i in range(12)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:  # new connections: both workers get some
        assert list(pool.map(lambda b: post(port, b.encode()), bodies)) == [200] * len(bodies)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in families(port)["melu_batch_requests"].samples  # type: ignore[attr-defined]
    }
    groups = samples[("melu_batch_requests_count", None)]
    assert samples[("melu_batch_requests_sum", None)] == len(bodies)  # summed over workers
    assert groups < len(bodies)  # requests that came together were answered together ...
    assert samples[("melu_batch_requests_bucket", "4.0")] == groups  # ... at most 4 at once


def test_the_supervisor_holds_no_model(workers: tuple) -> None:
    server, port, _ = workers
    worker = min(rss_mib(pid) for pid in model_pids(port))
    supervisor = rss_mib(server.pid)
    assert supervisor < 150 and supervisor < worker / 3, (supervisor, worker)


def test_a_killed_worker_is_dropped_from_model_info(workers: tuple) -> None:
    server, port, log = workers
    before = model_pids(port)
    victim = min(before)
    os.kill(int(victim), signal.SIGKILL)
    wait_for(
        lambda: victim not in (now := model_pids(port)) and len(now) == 2,
        server,
        log,
        "the killed worker is still listed or not replaced",
    )
