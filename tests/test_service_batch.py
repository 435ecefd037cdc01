"""Batch recommendations: one batched pass gives each user's single answer; a bad user
fails the whole batch with a 422 naming that user; ``melu recommend --batch``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import wait_ready

from melu.model.estimator import PreferenceEstimator
from melu.serving import Recommender, Request
from service.app import create_app, model_version
from service.deps import Loaded
from service.routes.common import adaptation, model_ref, scored
from service.schemas import BatchResponse, BatchResult
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

USERS: list[dict[str, Any]] = [
    {"user": {"gender": "F", "age": 25}, "ratings": [{"item_id": 50, "rating": 5}], "k": 5},
    {"ratings": [], "k": 3},  # features only
    {
        "user": {"occupation": "student", "zip": "94110"},
        "ratings": [{"item_id": i, "rating": float(1 + i % 5)} for i in range(1, 30)],
        "k": 10,
    },
    {
        "user": {"gender": "M"},
        "ratings": [{"item_id": 181, "rating": 1}, {"item_id": 1, "rating": 4.5}],
        "k": 4,
        "exclude_rated": False,
        "candidate_ids": [1, 2, 3, 181, 100, 7],
    },
    {"ratings": [{"item_id": 258, "rating": 2}, {"item_id": 100, "rating": 5}], "k": 1682},
]


@pytest.fixture(scope="module")
def client(bundle_path: Path, recommender: Recommender) -> Iterator[TestClient]:
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    settings = Settings(model=bundle_path, reload_interval=0, max_batch=8, max_ratings=50)
    with TestClient(create_app(settings, loaded)) as test_client:
        wait_ready(lambda path: test_client.get(path).status_code)
        yield test_client


def wanted(body: dict[str, Any]) -> Request:
    return Request(
        body.get("user", {}),
        [(r["item_id"], float(r["rating"])) for r in body["ratings"]],
        body["k"],
        body.get("exclude_rated", True),
        body.get("candidate_ids"),
    )


def same_ranking(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    """Same (item, score) rankings up to float rounding: scores equal position by position,
    and the same items in the same order except within ties (movies the model cannot tell
    apart, e.g. two unseen ones with the same features, swap on the last bit)."""
    assert len(a) == len(b)
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert x == pytest.approx(y, abs=1e-5)
    cut = min(s for _, s in a) + 2e-5  # a tie group at the end may be cut differently
    for mine, other in ((a, b), (b, a)):  # (no rounding to digits: 2.95905 rounds both ways)
        assert {i for i, s in mine if s > cut} <= {i for i, _ in other}


def assert_same(batch: Any, single: Any) -> None:
    """Same items in the same order, scores and support losses equal up to float rounding."""
    same_ranking(
        [(i.item_id, i.score) for i in batch.items], [(i.item_id, i.score) for i in single.items]
    )
    assert batch.adaptation.steps == single.adaptation.steps
    for name in ("support_loss_before", "support_loss_after"):
        x, y = getattr(batch.adaptation, name), getattr(single.adaptation, name)
        assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, rel=1e-4))


def test_batch_equals_one_at_a_time(recommender: Recommender) -> None:
    requests = [wanted(u) for u in USERS]
    many = recommender.recommend_many(requests)
    assert len(many) == len(requests)
    for request, batch in zip(requests, many, strict=True):
        single = recommender.recommend(
            request.user, request.ratings, request.k, request.exclude_rated, request.candidates
        )
        assert_same(batch, single)


def variant(recommender: Recommender, name: str) -> Recommender:
    """The bundle served as another kind of model: ``mlp`` (the MLP adapts: per-person
    catalog passes, the batched kernel), ``all`` (embeddings adapt: no item cache),
    ``no-head`` (ranked by the predicted rating)."""
    bundle = recommender.bundle
    config = bundle.config
    if name == "no-head":
        config = config.replace(model=config.model.replace(ranking=False))
    else:
        config = config.replace(
            model=config.model.replace(fast_params=name), meta=config.meta.replace(inner_lr=0.002)
        )
    model = PreferenceEstimator(config.model, bundle.features)
    changed = dataclasses.replace(bundle, config=config, model=model)
    return Recommender(changed, onboarding=False, threads=1)


@pytest.mark.parametrize("kind", ["user", "mlp", "all", "no-head"])
def test_batch_items_and_reasons_equal_one_at_a_time_for_every_kind_of_model(
    recommender: Recommender, kind: str
) -> None:
    """Each person of a mixed batch (whole catalog or candidates, rated items kept or not,
    no ratings, k up to the catalog) gets their single answer: the same items in the same
    order, and the same reasons named behind each."""
    served = recommender if kind == "user" else variant(recommender, kind)
    requests = [wanted(u) for u in USERS * 3]  # more than one chunk of the MLP's
    for request, batch in zip(requests, served.recommend_many(requests), strict=True):
        single = served.recommend(
            request.user, request.ratings, request.k, request.exclude_rated, request.candidates
        )
        assert_same(batch, single)
        for a, b in zip(batch.items, single.items, strict=True):
            if a.item_id == b.item_id:
                assert a.because == b.because and a.title == b.title and a.genres == b.genres


def test_batch_route_equals_the_single_route(client: TestClient) -> None:
    response = client.post("/v1/recommendations/batch", json={"users": USERS})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(USERS)
    for body, result in zip(USERS, results, strict=True):
        single = client.post("/v1/recommendations", json=body).json()
        same_ranking(
            [(i["item_id"], i["score"]) for i in result["items"]],
            [(i["item_id"], i["score"]) for i in single["items"]],
        )
        assert result["adaptation"]["steps"] == single["adaptation"]["steps"]
    assert response.json()["model"]["version"] == response.headers["x-model-version"]


def test_batch_body_is_the_declared_schema_byte_for_byte(
    client: TestClient, recommender: Recommender
) -> None:
    """The route encodes its answer without a pydantic model per item: the bytes are what
    ``BatchResponse`` of the same answers dumps (titles with accents, a movie without a
    year, reasons, no ratings), and /openapi.json still declares ``BatchResponse``."""
    response = client.post("/v1/recommendations/batch", json={"users": USERS})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    loaded = Loaded(recommender, response.headers["x-model-version"], "ml-100k")
    results = recommender.recommend_many([wanted(u) for u in USERS])
    want = BatchResponse(
        results=[
            BatchResult(items=scored(r.items, loaded), adaptation=adaptation(r.adaptation, loaded))
            for r in results
        ],
        model=model_ref(loaded),
    )
    assert response.content == want.model_dump_json().encode()
    items = [i for r in response.json()["results"] for i in r["items"]]
    assert any(i["year"] is None for i in items) and any(i["because"] for i in items)
    assert any(not i["title"].isascii() for i in items)
    schema = client.get("/openapi.json").json()["paths"]["/v1/recommendations/batch"]["post"]
    answer = schema["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/BatchResponse"}


@pytest.mark.parametrize(
    ("bad", "loc"),
    [
        ({"ratings": [{"item_id": 50, "rating": 9}]}, ["body", "users", 2, "ratings", 0, "rating"]),
        (
            {"ratings": [{"item_id": 50, "rating": 3}, {"item_id": 99999, "rating": 3}]},
            ["body", "users", 2, "ratings", 1, "item_id"],
        ),
        ({"k": 0}, ["body", "users", 2, "k"]),
        ({"k": "ten"}, ["body", "users", 2, "k"]),
        ({"candidate_ids": []}, ["body", "users", 2, "candidate_ids"]),
        (
            {"ratings": [{"item_id": i, "rating": 3} for i in range(1, 60)]},
            ["body", "users", 2, "ratings"],
        ),
    ],
)
def test_one_bad_user_fails_the_whole_batch_naming_it(
    client: TestClient, bad: dict[str, Any], loc: list[Any]
) -> None:
    users = [USERS[0], USERS[1], bad, USERS[3]]
    response = client.post("/v1/recommendations/batch", json={"users": users})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert "results" not in response.json()


def test_batch_size_is_bounded(client: TestClient) -> None:
    response = client.post("/v1/recommendations/batch", json={"users": [USERS[1]] * 9})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "users"] and "MELU_MAX_BATCH" in detail["msg"]
    empty = client.post("/v1/recommendations/batch", json={"users": []})
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "users"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melu", "recommend", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_batch_writes_one_answer_per_line(
    bundle_path: Path, recommender: Recommender, tmp_path: Path
) -> None:
    users = tmp_path / "users.jsonl"
    users.write_text("".join(json.dumps(u) + "\n" for u in USERS * 3))
    out = tmp_path / "recs.jsonl"
    done = run_cli("--model", str(bundle_path), "--batch", str(users), "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(USERS) * 3
    for body, line in zip(USERS * 3, lines, strict=True):
        single = recommender.recommend(**_kwargs(body))
        assert [i["item_id"] for i in line["items"]] == [i.item_id for i in single.items]
    assert "users" in done.stderr  # the progress bar
    assert all("id" not in line for line in lines)  # no key given, none made up

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(USERS[0]) + "\n" + json.dumps({"k": -1}) + "\n")
    bad_out = tmp_path / "bad.jsonl"
    done = run_cli("--model", str(bundle_path), "--batch", str(broken), "--out", str(bad_out))
    assert done.returncode == 2
    assert "line 2" in done.stderr and "k" in done.stderr
    assert not bad_out.exists()  # nothing half-written


def _kwargs(body: dict[str, Any]) -> dict[str, Any]:
    request = wanted(body)
    return {
        "user": request.user,
        "ratings": request.ratings,
        "k": request.k,
        "exclude_rated": request.exclude_rated,
        "candidates": request.candidates,
    }


def test_cli_batch_carries_each_users_id_through(
    bundle_path: Path, recommender: Recommender, tmp_path: Path
) -> None:
    keys: list[Any] = ["alice", 7, None, "b-42"]
    users = tmp_path / "users.jsonl"
    bodies = [({"id": k} if k is not None else {}) | u for k, u in zip(keys, USERS, strict=False)]
    users.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    out = tmp_path / "recs.jsonl"
    done = run_cli("--model", str(bundle_path), "--batch", str(users), "--out", str(out),
                   "--batch-size", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("id") for line in lines] == keys
    assert "id" not in lines[2]
    for body, line in zip(bodies, lines, strict=True):
        body = {k: v for k, v in body.items() if k != "id"}
        single = recommender.recommend(**_kwargs(body))
        assert [i["item_id"] for i in line["items"]] == [i.item_id for i in single.items]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": [1], **USERS[0]}) + "\n")
    done = run_cli("--model", str(bundle_path), "--batch", str(bad), "--out", str(out))
    assert done.returncode == 2 and "line 1: id: must be a string or an integer" in done.stderr


@pytest.mark.parametrize("kind", ["user", "mlp", "all"])
def test_the_personalisation_rule_holds_one_at_a_time_and_in_a_batch(
    recommender: Recommender, kind: str
) -> None:
    """The bundle with its head's rule off and on (at most 3 of the no-ratings list from 4 ratings):
    everyone with 4+ ratings gets a top-10 of the whole catalog holding at most 3 of the
    10 the same person gets with no ratings, one at a time and in a batch alike; people
    with candidates or fewer ratings get what they got without the rule."""
    from melu.model.personal import shared_cut

    def served_with(recommender: Recommender, keep: int) -> Recommender:
        bundle = recommender.bundle
        params = {**bundle.params, "rank.shared_cut": shared_cut(keep, 4)}
        changed = dataclasses.replace(bundle, params=params)
        return Recommender(changed, onboarding=False, threads=1)

    base = recommender if kind == "user" else variant(recommender, kind)
    served, ruled = served_with(base, 10), served_with(base, 3)  # the rule off, on
    people = [
        {"user": {"gender": "F", "age": 25}, "ratings": [{"item_id": i, "rating": 5} for i in (1, 50, 181, 172)]},
        {"user": {"occupation": "student"}, "ratings": [{"item_id": i, "rating": float(1 + i % 5)} for i in range(1, 30)]},
        {"ratings": [{"item_id": i, "rating": 4} for i in (98, 127, 56, 174, 100, 313)]},
    ]  # fmt: skip
    requests = [wanted({**p, "k": 10}) for p in people]
    bound = 0
    for request, batch in zip(requests, ruled.recommend_many(requests), strict=True):
        single = ruled.recommend(request.user, request.ratings, 10)
        assert_same(batch, single)
        assert_same(ruled.recommend(request.user, request.ratings, 10), single)  # list kept
        none = {i.item_id for i in ruled.recommend(request.user, [], 10).items}
        mine = {i.item_id for i in single.items}
        free = {i.item_id for i in served.recommend(request.user, request.ratings, 10).items}
        assert len(mine & none) <= 3
        bound += len(free & none) > 3
    assert bound  # the rule changed someone's list
    few = wanted(USERS[0])  # one rating: the rule is off
    assert_same(
        ruled.recommend(few.user, few.ratings, 10), served.recommend(few.user, few.ratings, 10)
    )
    picked = USERS[3]  # candidates: ranked among themselves as scored
    got = ruled.recommend_many([wanted(picked)])[0]
    assert_same(got, served.recommend_many([wanted(picked)])[0])
