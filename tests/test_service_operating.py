"""Operating the service (issue 17): /metrics without ``_created`` series and with real
route labels (parsed by prometheus-client's parser), CORS behind ``MELU_CORS_ORIGINS``
(off by default), and one log format for everything the server writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import BODY
from service_fixtures import wait_client_ready as wait_ready

from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender, client


def test_metrics_have_no_created_series_and_label_real_routes(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    docs = client.get("/docs")
    asset = docs.text.split('src="')[1].split('"')[0]
    for path in ("/openapi.json", "/docs", asset):
        assert client.get(path).status_code == 200
    families = list(text_string_to_metric_families(client.get("/metrics").text))
    samples = [s for f in families for s in f.samples]
    assert not [s.name for s in samples if s.name.endswith("_created")]
    answered = {
        (s.labels["route"], s.labels["status"])
        for s in samples
        if s.name == "melu_http_requests_total"
    }
    assert {("/openapi.json", "200"), ("/docs", "200")} <= answered
    assert [r for r, status in answered if asset.startswith(r) and r != "/"], (asset, answered)
    assert ("unmatched", "200") not in answered  # only what really matched nothing


def test_cors_is_off_by_default_and_on_for_the_configured_origins(
    bundle_path: Path, recommender: Recommender, client: TestClient
) -> None:
    preflight = {
        "Origin": "https://app.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    off = client.options("/v1/recommendations", headers=preflight)
    assert off.status_code == 405 and "access-control-allow-origin" not in off.headers
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    settings = Settings(
        model=bundle_path, reload_interval=0, cors_origins="https://app.example.org"
    )
    with TestClient(create_app(settings, loaded)) as cors:
        wait_ready(cors)
        on = cors.options("/v1/recommendations", headers=preflight)
        assert on.status_code == 200
        assert on.headers["access-control-allow-origin"] == "https://app.example.org"
        answer = cors.post(
            "/v1/recommendations", json=BODY, headers={"Origin": preflight["Origin"]}
        )
        assert answer.headers["access-control-allow-origin"] == "https://app.example.org"
        assert "x-model-version" in answer.headers["access-control-expose-headers"]
        other = cors.options(
            "/v1/recommendations", headers={**preflight, "Origin": "https://x.org"}
        )
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_one_log_format_for_uvicorn_the_service_and_the_access_log(fmt: str) -> None:
    """What `melu serve --log-format FMT` configures, applied in a fresh interpreter."""
    import subprocess
    import sys

    script = (
        "import logging, logging.config\n"
        "from service.logs import log_config\n"
        f"logging.config.dictConfig(log_config({fmt!r}, 'info'))\n"
        "logging.getLogger('uvicorn.error').info('Uvicorn running on http://x')\n"
        "logging.getLogger('melu.service').warning('model reloaded')\n"
        "line = dict(time='t', request_id='r', method='GET', route='/health', status=200,"
        " latency_ms=1.0, model_version='v', ratings=None)\n"
        "logging.getLogger('melu.access').info('x', extra={'access': line})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and done.stdout == ""
    if fmt == "json":
        uvicorn, service, access = (json.loads(x) for x in lines)
        assert uvicorn["logger"] == "uvicorn.error" and uvicorn["level"] == "info"
        assert service["message"] == "model reloaded" and access["route"] == "/health"
    else:
        assert not any(x.startswith("{") for x in lines)
        assert "INFO uvicorn.error: Uvicorn running" in lines[0]
        assert "GET /health 200 1.0 ms id=r" in lines[2]
