"""Operating the service: /health vs /ready, request ids, the JSON access log, the model
version header, /metrics, and reloading a changed bundle without downtime."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from service_fixtures import BODY, point
from service_fixtures import wait_client_ready as wait_ready

import service.slot
from melu.bundle import file_sha256
from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender, client


class Lines(logging.Handler):
    """Collects the JSON lines of the ``melu.access`` logger."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    handler = Lines()
    logger = logging.getLogger("melu.access")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


# ---------------------------------------------------------------- liveness and readiness
def test_ready_is_503_until_loaded_and_warmed_up_health_is_live(
    bundle_path: Path, recommender: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, reload_interval=0), loaded)
    before = TestClient(app)  # no lifespan: nothing loaded yet
    assert before.get("/health").json() == {"status": "ok", "n_items": None}
    assert before.get("/ready").status_code == 503
    assert before.get("/ready").json()["status"] == "loading"
    assert before.post("/v1/recommendations", json=BODY).status_code == 503

    release = threading.Event()
    real = service.slot.warm_up

    def slow_warm_up(loaded: Loaded) -> None:
        assert release.wait(30)
        real(loaded)

    monkeypatch.setattr(service.slot, "warm_up", slow_warm_up)
    with TestClient(app) as client:
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["status"] == "warming up"
        assert client.get("/health").status_code == 200  # live while warming up
        release.set()
        wait_ready(client)
        assert client.get("/ready").json() == {
            "status": "ready",
            "model_version": model_version(recommender),
        }


# ---------------------------------------------------------------- request ids and the log
def test_request_id_is_kept_or_made_and_model_version_on_every_response(
    client: TestClient, recommender: Recommender
) -> None:
    version = model_version(recommender)
    given = client.post("/v1/recommendations", json=BODY, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/v1/items?limit=1")
    assert len(made.headers["x-request-id"]) == 32
    bad = client.get("/health", headers={"X-Request-ID": "no spaces\tor tabs" + "x" * 200})
    assert (
        bad.headers["x-request-id"] != "no spaces\tor tabs"
        and len(bad.headers["x-request-id"]) == 32
    )
    for response in (
        given,
        made,
        bad,
        client.get("/nowhere"),
        client.post("/v1/recommendations", json={"k": "ten"}),
        client.get("/metrics"),
        client.head("/v1/model"),
    ):
        assert response.headers["x-model-version"] == version, response.request.url
    assert client.get("/v1/model").json()["version"] == version


def test_one_json_access_line_per_request_without_the_ratings(
    client: TestClient, access_lines: list[dict[str, Any]]
) -> None:
    body = {"ratings": [{"item_id": 50, "rating": 5}, {"item_id": 181, "rating": 2}], "k": 3}
    client.post("/v1/recommendations", json=body, headers={"X-Request-ID": "r1"})
    client.get("/v1/items?search=star&limit=2")
    client.post("/v1/recommendations", json={"ratings": [{"item_id": -5, "rating": 3}]})
    client.get("/nowhere")
    assert len(access_lines) == 4
    first, items, bad, missing = access_lines
    assert first["request_id"] == "r1" and first["route"] == "/v1/recommendations"
    assert first["status"] == 200 and first["ratings"] == 2 and first["method"] == "POST"
    assert first["latency_ms"] > 0 and first["model_version"]
    assert set(first) == {
        "time", "request_id", "method", "route", "status", "latency_ms", "model_version",
        "ratings",
    }  # fmt: skip
    assert "181" not in json.dumps(first)  # never the rated items or values
    assert items["route"] == "/v1/items" and items["ratings"] is None
    assert "star" not in json.dumps(items)  # no query strings
    assert bad["status"] == 422 and missing == {**missing, "status": 404, "route": "unmatched"}


# ---------------------------------------------------------------- metrics
def test_metrics_in_prometheus_format(client: TestClient, recommender: Recommender) -> None:
    assert client.post("/v1/recommendations", json=BODY).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = 'method="POST",route="/v1/recommendations",status="200"'
    assert f"melu_http_requests_total{{{route}}}" in text
    assert f'melu_http_request_duration_seconds_bucket{{le="0.01",{route}}}' in text
    assert 'melu_adaptation_seconds_count{route="recommendations"}' in text
    assert 'melu_request_ratings_bucket{le="1.0",route="recommendations"}' in text
    version = model_version(recommender)
    assert f'melu_model_info{{dataset="ml-100k",version="{version}"}} 1.0' in text
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


# ---------------------------------------------------------------- reload
def new_version(source: Path, target: Path, shift: float) -> Path:
    """A copy of the bundle at ``source`` with its output bias moved by ``shift`` (a
    different, valid model: digests rewritten)."""
    shutil.copytree(source, target)
    weights = load_file(str(target / "weights.safetensors"))
    head = max(k for k in weights if k.endswith(".bias") and k.startswith("mlp."))
    weights[head] = weights[head] + shift
    save_file(weights, str(target / "weights.safetensors"))
    info = json.loads((target / "config.json").read_text())
    info["digests"]["weights.safetensors"] = file_sha256(target / "weights.safetensors")
    (target / "config.json").write_text(json.dumps(info))
    return target


@pytest.fixture
def reloadable(bundle_path: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    live = tmp_path / "live"
    a = tmp_path / "a"
    shutil.copytree(bundle_path, a)
    live.symlink_to(a)
    return live, a, new_version(bundle_path, tmp_path / "b", -1.0)


def test_reload_swaps_a_good_bundle_and_refuses_a_broken_one(
    reloadable: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live, a, b = reloadable
    app = create_app(Settings(model=live, reload_interval=0))
    with TestClient(app) as client:
        wait_ready(client)
        slot = app.state.slot
        old = client.post("/v1/recommendations", json=BODY)
        assert slot.check() == "unchanged"
        point(live, b)
        assert slot.check() == "swapped"
        new = client.post("/v1/recommendations", json=BODY)
        assert new.headers["x-model-version"] != old.headers["x-model-version"]
        assert new.json()["model"]["version"] == new.headers["x-model-version"]
        assert client.get("/v1/model").json()["version"] == new.headers["x-model-version"]
        assert new.json()["items"][0]["score"] != old.json()["items"][0]["score"]

        broken = tmp_path / "broken"
        shutil.copytree(a, broken)
        (broken / "weights.safetensors").write_bytes(b"\0" * 100)
        point(live, broken)
        with caplog.at_level(logging.ERROR, logger="melu.service"):
            assert slot.check() == "refused"
        assert "model reload refused" in caplog.text and "broken" in caplog.text
        assert slot.check() == "unchanged"  # the same broken bundle is not retried
        after = client.post("/v1/recommendations", json=BODY)
        assert after.status_code == 200 and after.json() == new.json()
        assert client.get("/ready").status_code == 200
        metrics = client.get("/metrics").text
        assert 'melu_model_reloads_total{outcome="refused"}' in metrics
        assert 'melu_model_reloads_total{outcome="swapped"}' in metrics


def test_requests_in_flight_finish_on_their_model(reloadable: tuple[Path, Path, Path]) -> None:
    live, _, b = reloadable
    app = create_app(Settings(model=live, reload_interval=0))
    with TestClient(app) as client:
        wait_ready(client)
        slot = app.state.slot
        old = slot.current
        entered, release = threading.Event(), threading.Event()
        real = old.recommender.recommend

        def held(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            assert release.wait(30)
            return real(*args, **kwargs)

        old.recommender.recommend = held  # type: ignore[method-assign]
        replies: list[Any] = []
        thread = threading.Thread(
            target=lambda: replies.append(client.post("/v1/recommendations", json=BODY))
        )
        thread.start()
        assert entered.wait(30)
        point(live, b)
        assert slot.check() == "swapped"  # while the request is still computing
        later: list[Any] = []  # a new request gets the new model (computed after the held
        second = threading.Thread(  # one: the worker's one model thread is busy with it)
            target=lambda: later.append(client.post("/v1/recommendations", json=BODY))
        )
        second.start()
        release.set()
        thread.join(30)
        second.join(30)
        (reply,), (during,) = replies, later
        assert reply.status_code == during.status_code == 200
        assert reply.json()["model"]["version"] == old.version
        assert reply.headers["x-model-version"] == old.version
        assert during.json()["model"]["version"] == slot.current.version != old.version


def test_reload_is_polled(reloadable: tuple[Path, Path, Path]) -> None:
    live, _, b = reloadable
    app = create_app(Settings(model=live, reload_interval=0.1))
    with TestClient(app) as client:
        wait_ready(client)
        before = client.get("/v1/model").json()["version"]
        point(live, b)
        deadline = time.monotonic() + 60
        while client.get("/v1/model").json()["version"] == before:
            assert time.monotonic() < deadline, "the new bundle was not picked up"
            time.sleep(0.05)
        assert client.get("/ready").status_code == 200
