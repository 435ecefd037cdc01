"""Hostile HTTP input: always a bounded 4xx that can be encoded, never a 500 or a drop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import wait_ready

from melu.serving import Recommender
from service.app import create_app
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender


@pytest.fixture(scope="module")
def client(bundle_path: Path, recommender: Recommender) -> Iterator[TestClient]:
    app = create_app(Settings(model=bundle_path), Loaded(recommender, "test", "ml-100k"))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(lambda path: c.get(path).status_code)
        yield c


def post_raw(client: TestClient, path: str, text: str) -> object:
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


SURROGATE = "\\ud800"  # a JSON escape for a lone surrogate: valid JSON, not valid Unicode


@pytest.mark.parametrize("path", ["/v1/recommendations", "/v1/predictions"])
@pytest.mark.parametrize(
    "body",
    [
        f'{{"user": {{"gender": "{SURROGATE}"}}, "item_ids": [1]}}',
        f'{{"user": {{"{SURROGATE}": "F"}}, "item_ids": [1]}}',
        f'{{"ratings": [{{"item_id": "{SURROGATE}", "rating": 5}}], "item_ids": [1]}}',
        f'{{"ratings": [{{"item_id": 1, "rating": "{SURROGATE}"}}], "item_ids": [1]}}',
        f'{{"{SURROGATE}": 1}}',
    ],
    ids=["value", "key", "item id", "rating", "top key"],
)
def test_strings_that_cannot_be_encoded_get_a_422(client: TestClient, path: str, body: str) -> None:
    response = post_raw(client, path, body)
    assert response.status_code == 422  # type: ignore[attr-defined]
    response.json()  # type: ignore[attr-defined]  # the error body itself is valid JSON


def test_echoed_input_is_bounded(client: TestClient) -> None:
    ratings = [{"item_id": "x" * 1000, "rating": 5}] * 200
    body = json.dumps({"ratings": ratings, "k": 5})
    response = post_raw(client, "/v1/recommendations", body)
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert len(response.content) < 20_000 < len(body)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "field", [{"k": "5"}, {"k": True}, {"k": 5.0}, {"exclude_rated": "yes"}, {"exclude_rated": 1}]
)
def test_request_types_are_strict(client: TestClient, field: dict[str, object]) -> None:
    response = client.post("/v1/recommendations", json={"ratings": [], **field})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", next(iter(field))]


def test_head_answers_like_get_without_a_body(client: TestClient) -> None:
    for path in ("/health", "/v1/items?limit=2", "/v1/model"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200
        assert head.content == b"" and head.headers["content-length"] == str(len(got.content))


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text
    assets = [p.split('"')[0] for p in page.text.split('src="')[1:]]
    assert assets and all(client.get(a).status_code == 200 for a in assets)
