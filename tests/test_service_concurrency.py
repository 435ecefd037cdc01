"""200 different users at once get the answers they get one by one (no shared state):
predictions exactly, recommendations up to float rounding (the worker adapts those that
arrive together in one batched pass, ``service.batching``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from service_fixtures import same_answer

from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

GENDERS = ["F", "M", None]
OCCUPATIONS = ["student", "engineer", "artist", "retired", "none", None]


def requests_for_users(recommender: Recommender, count: int, seed: int = 0) -> list[dict]:
    """``count`` different users: random features and 0..8 random ratings each."""
    rng = np.random.default_rng(seed)
    ids = recommender.catalog.item_ids
    out = []
    for i in range(count):
        rated = rng.choice(ids, size=int(rng.integers(0, 9)), replace=False)
        body: dict[str, Any] = {
            "user": {
                "gender": GENDERS[i % 3],
                "age": int(rng.integers(10, 70)),
                "occupation": OCCUPATIONS[i % len(OCCUPATIONS)],
            },
            "ratings": [{"item_id": int(j), "rating": int(rng.integers(1, 6))} for j in rated],
            "k": 10,
        }
        if i % 4 == 3:
            body = {**body, "item_ids": [int(j) for j in rng.choice(ids, 5)]}
            del body["k"]
        out.append(body)
    return out


@pytest.fixture(scope="module")
def base_url(bundle_path: Path, recommender: Recommender) -> Iterator[str]:
    from service_fixtures import serve_in_thread

    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    with serve_in_thread(create_app(Settings(model=bundle_path), loaded)) as url:
        yield url


def _send(client: httpx.Client, body: dict) -> tuple[int, Any]:
    path = "/v1/predictions" if "item_ids" in body else "/v1/recommendations"
    response = client.post(path, json=body)
    return response.status_code, response.json()


def test_concurrent_answers_equal_sequential_answers(
    base_url: str, recommender: Recommender
) -> None:
    bodies = requests_for_users(recommender, 200)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(base_url=base_url, timeout=60, limits=limits) as client:
        sequential = [_send(client, body) for body in bodies]
        with ThreadPoolExecutor(max_workers=32) as pool:
            concurrent = list(pool.map(lambda b: _send(client, b), bodies))
    assert all(status == 200 for status, _ in sequential)
    for body, (status, one), (_, alone) in zip(bodies, concurrent, sequential, strict=True):
        assert status == 200
        if "item_ids" in body:  # predictions are computed one at a time
            assert one == alone
        else:
            assert same_answer(one, alone), (one, alone)
    # and the served answers are the library's answers
    for body, (_, served) in list(zip(bodies, sequential, strict=True))[:8]:
        ratings = [(r["item_id"], float(r["rating"])) for r in body["ratings"]]
        user = {k: v for k, v in body["user"].items() if v is not None}
        if "item_ids" in body:
            scores, _ = recommender.predict(user, ratings, body["item_ids"])
            assert [p["rating"] for p in served["predictions"]] == scores
        else:
            result = recommender.recommend(user, ratings, k=10)
            assert [i["item_id"] for i in served["items"]] == [i.item_id for i in result.items]
            assert [i["score"] for i in served["items"]] == [i.score for i in result.items]
