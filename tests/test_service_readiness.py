"""Model version and readiness tell the truth (issue 16, class 4): ``X-Model-Version``
covers ``config.json``; model routes answer 503 (JSON naming why) while the model is not
ready, when its warm-up fails, and whenever a request's scores are not finite."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import BODY, point, wait_client_ready

import service.slot
from melu.errors import MeluError
from melu.serving import Recommender
from service.app import create_app
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path

MODEL_ROUTES = [
    ("post", "/v1/recommendations", BODY),
    ("post", "/v1/predictions", {**{k: BODY[k] for k in ("user", "ratings")}, "item_ids": [1]}),
    ("post", "/v1/recommendations/batch", {"users": [BODY]}),
    ("get", "/v1/onboarding", None),
]


def with_meta(source: Path, target: Path, **meta: float) -> Path:
    """A copy of the bundle whose config.json changes only ``config.meta`` (not digested)."""
    shutil.copytree(source, target)
    info = json.loads((target / "config.json").read_text())
    info["config"]["meta"].update(meta)
    (target / "config.json").write_text(json.dumps(info))
    return target


def call(client: TestClient, method: str, path: str, body: object) -> object:
    return client.post(path, json=body) if method == "post" else client.get(path)


def test_a_reload_that_changes_only_config_json_changes_the_version(
    bundle_path: Path, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.symlink_to(shutil.copytree(bundle_path, tmp_path / "a"))
    seven = with_meta(bundle_path, tmp_path / "b", inner_steps=7)
    app = create_app(Settings(model=live, reload_interval=0))
    with TestClient(app) as client:
        wait_client_ready(client)
        before = client.post("/v1/recommendations", json=BODY)
        point(live, seven)
        assert app.state.slot.check() == "swapped"
        after = client.post("/v1/recommendations", json=BODY)
        assert after.headers["x-model-version"] != before.headers["x-model-version"]
        model = client.get("/v1/model").json()
        assert model["inner_steps"] == 7 and model["version"] == after.headers["x-model-version"]


@pytest.fixture
def exploding(bundle_path: Path, tmp_path: Path) -> Path:
    """In bounds, yet every adaptation overflows: inner_lr = 1e30."""
    return with_meta(bundle_path, tmp_path / "huge", inner_lr=1e30)


def test_a_model_that_fails_its_warm_up_is_never_served(exploding: Path) -> None:
    app = create_app(Settings(model=exploding, reload_interval=0))
    try:
        with TestClient(app) as client:
            deadline = time.monotonic() + 60
            while app.state.slot.failure is None:
                assert time.monotonic() < deadline, "the warm-up neither failed nor passed"
                time.sleep(0.02)
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "warm-up failed"
            assert client.get("/health").status_code == 200
            for method, path, body in MODEL_ROUTES:
                response = call(client, method, path, body)
                assert response.status_code == 503, path  # type: ignore[attr-defined]
                (detail,) = response.json()["detail"]  # type: ignore[attr-defined]
                assert detail["type"] == "model_not_ready" and "warm-up failed" in detail["msg"]
    except MeluError:  # refused when loading (a stricter bundle check): never served either
        pass


def test_non_finite_scores_are_never_answered(
    exploding: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that passed its warm-up but gives NaN for some request: that request 503s
    (both probes skipped: the service's warm-up and the Recommender's load-time probe, which
    would refuse this bundle at load; tests/test_bundle_hostile.py covers that refusal)."""
    monkeypatch.setattr(service.slot, "warm_up", lambda loaded: None)
    monkeypatch.setattr(Recommender, "warm_up", lambda self: None)
    app = create_app(Settings(model=exploding, reload_interval=0))
    with TestClient(app) as client:
        wait_client_ready(client)
        for method, path, body in MODEL_ROUTES[:3]:  # with ratings: adapted to NaN
            response = call(client, method, path, body)
            assert response.status_code == 503, path  # type: ignore[attr-defined]
            (detail,) = response.json()["detail"]  # type: ignore[attr-defined]
            assert detail["type"] == "non_finite_scores" and detail["loc"] == ["model"]
        no_ratings = client.post("/v1/recommendations", json={"k": 3})  # nothing to adapt
        assert no_ratings.status_code == 200


@pytest.fixture
def unwarmed(bundle_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A loaded model whose warm-up never finishes."""
    hold = threading.Event()
    monkeypatch.setattr(service.slot, "warm_up", lambda loaded: hold.wait(60))
    with TestClient(create_app(Settings(model=bundle_path, reload_interval=0))) as client:
        yield client
        hold.set()


def test_model_routes_wait_for_the_warm_up(unwarmed: TestClient) -> None:
    assert unwarmed.get("/ready").json()["status"] == "warming up"
    for method, path, body in MODEL_ROUTES:
        response = call(unwarmed, method, path, body)
        assert response.status_code == 503, path  # type: ignore[attr-defined]
        assert "warming up" in response.json()["detail"][0]["msg"]  # type: ignore[attr-defined]
    assert unwarmed.get("/v1/model").status_code == 200  # what is loaded, while not ready
