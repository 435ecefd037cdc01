"""One model thread per worker groups the recommendations that arrive together
(``service.batching``): each answer equals the one-at-a-time answer, a bad request gets its
own 422 while the rest of its group is answered, and /metrics shows the group sizes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from service_fixtures import same_answer, serve_in_thread, wait_client_ready
from test_service_concurrency import requests_for_users

from melu.errors import ConfigError
from melu.serving import InvalidInput, Recommender, Request
from service.app import create_app, model_version
from service.batching import ModelThread
from service.deps import Loaded
from service.settings import Settings, from_env

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

BAD = [  # (ratings, the loc of the 422)
    ([{"item_id": 999_999, "rating": 4}], ["body", "ratings", 0, "item_id"]),
    ([{"item_id": 1, "rating": 4}, {"item_id": 1, "rating": 2}], ["body", "ratings", 1, "item_id"]),
]


@pytest.fixture(scope="module")
def base_url(bundle_path: Path, recommender: Recommender) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 whose groups stay open 50 ms: concurrent requests group."""
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    settings = Settings(model=bundle_path, reload_interval=0, batch_wait_ms=50, batch_requests=8)
    with serve_in_thread(create_app(settings, loaded)) as url:
        yield url


def groups(client: httpx.Client) -> tuple[float, float, float]:
    """(groups answered, requests in them, groups of one) from /metrics."""
    text = client.get("/metrics").text

    def value(name: str) -> float:
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return (
        value("melu_batch_requests_count"),
        value("melu_batch_requests_sum"),
        value('melu_batch_requests_bucket{le="1.0"}'),
    )


def test_concurrent_requests_are_grouped_and_each_gets_its_own_answer(
    base_url: str, recommender: Recommender
) -> None:
    bodies: list[dict[str, Any]] = [
        b for b in requests_for_users(recommender, 40, seed=3) if "item_ids" not in b
    ][:24]
    for n, (ratings, _) in enumerate(BAD):
        bodies.insert(5 + 9 * n, {**bodies[0], "ratings": ratings})
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(base_url=base_url, timeout=60, limits=limits) as client:
        send = lambda body: client.post("/v1/recommendations", json=body)  # noqa: E731
        alone = [send(body) for body in bodies]  # one at a time: groups of one
        before = groups(client)
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            together = list(pool.map(send, bodies))
        after = groups(client)
    bad = {5 + 9 * n: loc for n, (_, loc) in enumerate(BAD)}
    for i, (one, single) in enumerate(zip(together, alone, strict=True)):
        if i in bad:  # its own 422, as when it comes alone; its group answered without it
            assert one.status_code == single.status_code == 422, one.text
            assert one.json()["detail"][0]["loc"] == bad[i]
            assert one.json() == single.json()
        else:
            assert one.status_code == single.status_code == 200, one.text
            assert same_answer(one.json(), single.json()), (one.json(), single.json())
    count, requests, ones = (a - b for a, b in zip(after, before, strict=True))
    assert requests == len(bodies) - len(bad)  # every good request answered by one group
    assert count < requests and ones < count  # ... and groups of several formed
    assert requests / count <= 8  # MELU_BATCH_REQUESTS bounds a group


def test_one_at_a_time_answers_are_the_librarys_bit_for_bit(
    base_url: str, recommender: Recommender
) -> None:
    body = requests_for_users(recommender, 1, seed=5)[0]
    served = httpx.post(base_url + "/v1/recommendations", json=body, timeout=60).json()
    ratings = [(r["item_id"], float(r["rating"])) for r in body["ratings"]]
    user = {k: v for k, v in body["user"].items() if v is not None}
    result = recommender.recommend(user, ratings, k=body["k"])
    assert [(i["item_id"], i["score"]) for i in served["items"]] == [
        (i.item_id, i.score) for i in result.items
    ]


def test_metrics_show_group_sizes_and_queue_wait(base_url: str) -> None:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    assert "# TYPE melu_batch_requests histogram" in text
    assert "# TYPE melu_batch_queue_wait_seconds histogram" in text


def sampled() -> tuple[float, float]:
    """(groups, requests in them) of this process's ``melu_batch_requests``."""
    count = REGISTRY.get_sample_value("melu_batch_requests_count") or 0.0
    return count, REGISTRY.get_sample_value("melu_batch_requests_sum") or 0.0


def test_groups_are_bounded_and_a_failing_call_fails_alone(recommender: Recommender) -> None:
    """The model thread alone (no HTTP): 10 requests queued at once with room for 4 per
    group are answered by 3 groups (4, 4, 2); a call that raises gives its caller the error."""
    people = [Request({"age": 20 + i}, [(1, 5.0), (50, 1.0 + i % 5)], 5) for i in range(10)]

    async def main() -> tuple[list[Any], BaseException | None]:
        thread = ModelThread(wait=0.2, size=4)
        try:
            answers = await asyncio.gather(*(thread.recommend(recommender, p) for p in people))
            try:
                await thread.call(recommender.predict, {}, [], [999_999])
            except InvalidInput as exc:
                return list(answers), exc
            return list(answers), None
        finally:
            thread.stop()

    before = sampled()
    answers, error = asyncio.run(main())
    groups, requests = (a - b for a, b in zip(sampled(), before, strict=True))
    assert (groups, requests) == (3, 10)
    for person, answer in zip(people, answers, strict=True):
        single = recommender.recommend(person.user, person.ratings, person.k)
        assert [i.item_id for i in answer.items] == [i.item_id for i in single.items]
        assert [i.score for i in answer.items] == pytest.approx([i.score for i in single.items])
    assert isinstance(error, InvalidInput) and error.loc == ("item_ids", 0)


def test_group_settings_are_checked() -> None:
    assert from_env(Settings, batch_wait_ms=0, batch_requests=1).batch_requests == 1
    with pytest.raises(ConfigError, match="MELU_BATCH_WAIT_MS"):
        from_env(Settings, batch_wait_ms=-1)
    with pytest.raises(ConfigError, match="MELU_BATCH_REQUESTS"):
        from_env(Settings, batch_requests=0)


def test_serve_help_names_the_group_flags() -> None:
    from typer.testing import CliRunner

    from melu.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--batch-wait-ms" in result.output and "--batch-requests" in result.output
    assert "MELU_BATCH_WAIT_MS" in result.output


def test_a_lone_request_does_not_wait_for_company(
    bundle_path: Path, recommender: Recommender
) -> None:
    """A group stays open only while other requests are in flight: with a 1 s bound (the
    most allowed), one request alone is still answered at once."""
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    settings = Settings(model=bundle_path, reload_interval=0, batch_wait_ms=1000)
    body = {"user": {"age": 30}, "ratings": [{"item_id": 50, "rating": 5}], "k": 5}
    with TestClient(create_app(settings, loaded)) as client:
        wait_client_ready(client)
        started = time.perf_counter()
        assert client.post("/v1/recommendations", json=body).status_code == 200
        assert time.perf_counter() - started < 0.7
