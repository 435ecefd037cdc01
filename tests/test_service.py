"""The HTTP API on a trained ML-100K bundle: happy paths, every bad input, start-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import wait_ready

from melu.errors import BundleError
from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

RATINGS = [{"item_id": 50, "rating": 5}, {"item_id": 181, "rating": 4}, {"item_id": 1, "rating": 2}]
USER = {"gender": "F", "age": 25, "occupation": "student"}
LIMITS = {"max_ratings": 20, "max_items": 50, "max_body_bytes": 8192, "max_page": 30}


@pytest.fixture(scope="module")
def client(bundle_path: Path, recommender: Recommender) -> Iterator[TestClient]:
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, **LIMITS), loaded)
    with TestClient(app) as test_client:
        wait_ready(lambda path: test_client.get(path).status_code)
        yield test_client


def _detail(response: Any) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body["detail"], list) and body["detail"], body
    return body["detail"][0]  # type: ignore[no-any-return]


def test_recommendations_equal_the_library(client: TestClient, recommender: Recommender) -> None:
    body = {"user": USER, "ratings": RATINGS, "k": 7}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    served = response.json()
    direct = recommender.recommend(USER, [(r["item_id"], float(r["rating"])) for r in RATINGS], k=7)
    assert [i["item_id"] for i in served["items"]] == [i.item_id for i in direct.items]
    assert [i["score"] for i in served["items"]] == [i.score for i in direct.items]
    assert served["items"][0]["title"] == direct.items[0].title
    assert served["adaptation"]["steps"] == 3
    assert served["adaptation"]["support_loss_after"] == direct.adaptation.support_loss_after
    assert served["model"] == {"version": model_version(recommender), "dataset": "ml-100k"}


def test_zero_ratings_and_candidates(client: TestClient) -> None:
    response = client.post("/v1/recommendations", json={"ratings": [], "k": 3})
    assert response.status_code == 200
    assert response.json()["adaptation"] == {
        "steps": 0,
        "support_loss_before": None,
        "support_loss_after": None,
    }
    response = client.post(
        "/v1/recommendations", json={"k": 10, "candidate_ids": [3, 2, 1], "exclude_rated": False}
    )
    assert sorted(i["item_id"] for i in response.json()["items"]) == [1, 2, 3]


def test_predictions_equal_the_library(client: TestClient, recommender: Recommender) -> None:
    body = {"user": USER, "ratings": RATINGS, "item_ids": [100, 7, 1682]}
    response = client.post("/v1/predictions", json=body)
    assert response.status_code == 200, response.text
    direct, _ = recommender.predict(
        USER, [(r["item_id"], r["rating"]) for r in RATINGS], [100, 7, 1682]
    )
    assert response.json()["predictions"] == [
        {"item_id": i, "rating": s} for i, s in zip([100, 7, 1682], direct, strict=True)
    ]


def test_onboarding_items_model_health(client: TestClient, recommender: Recommender) -> None:
    board = client.get("/v1/onboarding", params={"n": 4}).json()["items"]
    assert [i["item_id"] for i in board] == [i.item_id for i in recommender.onboarding_items(4)]
    page = client.get("/v1/items", params={"search": "star", "limit": 3, "offset": 1}).json()
    assert page["total"] > 4 and page["limit"] == 3 and len(page["items"]) == 3
    assert all("star" in i["title"].lower() for i in page["items"])
    noir = client.get("/v1/items", params={"genre": "film-noir", "limit": 500}).json()
    assert noir["limit"] == LIMITS["max_page"]
    assert noir["items"] and all("Film-Noir" in i["genres"] for i in noir["items"])
    model = client.get("/v1/model").json()
    assert model["n_items"] == 1682 and model["rating_scale"] == [1.0, 5.0]
    assert model["config"]["meta"]["inner_steps"] == 3 and model["data_fingerprint"]
    assert client.get("/health").json() == {"status": "ok", "n_items": 1682}
    spec = client.get("/openapi.json").json()
    assert "examples" in spec["components"]["schemas"]["RecommendationRequest"]
    assert client.get("/docs").status_code == 200


def _post(client: TestClient, path: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


BAD = [
    # (path, body, loc, words in the message)
    ("/v1/recommendations", {"ratings": [{"item_id": 99999, "rating": 4}, {"item_id": 77777, "rating": 4}]}, ["body", "ratings", 0, "item_id"], ["77777", "99999"]),
    ("/v1/recommendations", {"ratings": [{"item_id": 1, "rating": 6}]}, ["body", "ratings", 0, "rating"], ["scale", "6"]),
    ("/v1/recommendations", {"ratings": [{"item_id": 1, "rating": 0}]}, ["body", "ratings", 0, "rating"], ["scale"]),
    ("/v1/recommendations", b'{"ratings": [{"item_id": 1, "rating": NaN}]}', ["body", "ratings", 0, "rating"], ["finite"]),
    ("/v1/recommendations", b'{"ratings": [{"item_id": 1, "rating": -Infinity}]}', ["body", "ratings", 0, "rating"], ["finite"]),
    ("/v1/recommendations", {"ratings": [{"item_id": 1, "rating": 3}, {"item_id": 1, "rating": 4}]}, ["body", "ratings", 1, "item_id"], ["duplicate"]),
    ("/v1/recommendations", {"ratings": [{"item_id": i, "rating": 3} for i in range(1, 22)]}, ["body", "ratings"], ["at most 20", "MELU_MAX_RATINGS"]),
    ("/v1/recommendations", {"k": 0}, ["body", "k"], ["catalog size"]),
    ("/v1/recommendations", {"k": 1683}, ["body", "k"], ["1683"]),
    ("/v1/recommendations", {"k": "ten"}, ["body", "k"], ["integer"]),
    ("/v1/recommendations", {"candidate_ids": [1, 5000]}, ["body", "candidate_ids", 1], ["5000"]),
    ("/v1/recommendations", {"candidate_ids": [1, 2, 1]}, ["body", "candidate_ids", 2], ["duplicate"]),
    ("/v1/recommendations", {"candidate_ids": list(range(1, 60))}, ["body", "candidate_ids"], ["MELU_MAX_ITEMS"]),
    ("/v1/recommendations", {"ratings": {"item_id": 1}}, ["body", "ratings"], ["list"]),
    ("/v1/recommendations", {"ratings": [{"item_id": "abc", "rating": 3}]}, ["body", "ratings", 0, "item_id"], ["integer"]),
    ("/v1/recommendations", {"ratings": [{"item_id": "50", "rating": 3}]}, ["body", "ratings", 0, "item_id"], ["integer"]),
    ("/v1/recommendations", {"ratings": [{"item_id": 50, "rating": True}]}, ["body", "ratings", 0, "rating"], ["number"]),
    ("/v1/recommendations", {"ratings": [{"item_id": 50, "rating": "5"}]}, ["body", "ratings", 0, "rating"], ["number"]),
    ("/v1/recommendations", {"user": {"age": "old"}}, ["body", "user", "age"], ["integer"]),
    ("/v1/recommendations", {"user": {"gender": "F", "shoe": 9}}, ["body", "user", "shoe"], ["not permitted"]),
    ("/v1/recommendations", b'{"ratings": [', ["body", 13], ["JSON"]),
    ("/v1/recommendations", b"[1, 2]", ["body"], ["valid dictionary"]),
    ("/v1/predictions", {"item_ids": []}, ["body", "item_ids"], ["at least 1"]),
    ("/v1/predictions", {"item_ids": [1, 0]}, ["body", "item_ids", 1], ["[0]"]),
    ("/v1/predictions", {"item_ids": [3, 3]}, ["body", "item_ids", 1], ["duplicate"]),
    ("/v1/predictions", {"ratings": [{"item_id": 2, "rating": 9}], "item_ids": [1]}, ["body", "ratings", 0, "rating"], ["scale"]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "loc", "words"), BAD)
def test_bad_input_is_422_naming_field_and_value(
    client: TestClient, path: str, body: Any, loc: list[Any], words: list[str]
) -> None:
    response = _post(client, path, body)
    assert response.status_code == 422, response.text
    detail = _detail(response)
    assert detail["loc"] == loc
    for word in words:
        assert word.lower() in (detail["msg"] + repr(detail.get("input"))).lower(), detail


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/v1/onboarding", {"n": 0}, ["query", "n"]),
        ("/v1/onboarding", {"n": "many"}, ["query", "n"]),
        ("/v1/items", {"limit": 0}, ["query", "limit"]),
        ("/v1/items", {"offset": -1}, ["query", "offset"]),
    ],
)
def test_bad_query_is_422(
    client: TestClient, path: str, params: dict[str, Any], loc: list[str]
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422
    assert _detail(response)["loc"] == loc


def test_bodies_over_the_limit_are_413(client: TestClient) -> None:
    big = b'{"ratings": [' + b" " * 9000 + b"]}"
    response = _post(client, "/v1/recommendations", big)
    assert response.status_code == 413
    assert "MELU_MAX_BODY_BYTES" in _detail(response)["msg"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is counted while reading
        yield b'{"ratings": ['
        for _ in range(10):
            yield b" " * 1000
        yield b"]}"

    response = client.post(
        "/v1/recommendations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_missing_bundle_fails_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model=tmp_path / "nothing"))
    with pytest.raises(BundleError, match="no model bundle"), TestClient(app):
        pass


def test_melu_serve_exits_with_a_clear_message_on_a_corrupt_bundle(
    bundle_path: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "run" / "model"
    shutil.copytree(bundle_path, broken)
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    done = subprocess.run(
        [sys.executable, "-m", "melu", "serve", "--model", str(broken.parent), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "weights.safetensors" in done.stderr
    assert "serving" not in done.stdout


def test_melu_recommend_prints_a_table(
    bundle_path: Path, recommender: Recommender, capsys: pytest.CaptureFixture[str]
) -> None:
    from melu.cli import run_app

    argv = ["recommend", "--model", str(bundle_path.parent), "--rate", "50=5", "--rate", "181=4"]
    assert run_app([*argv, "--gender", "F", "--age", "25", "--k", "4"]) == 0
    out = capsys.readouterr().out
    expected = recommender.recommend({"gender": "F", "age": 25}, [(50, 5.0), (181, 4.0)], k=4)
    assert "you rated 5: Star Wars (1977)" in out
    assert "support MSE" not in out  # jargon only with --verbose
    for item in expected.items:
        assert f"{item.item_id:>6}  {item.title[:47]}" in out and f"{item.score:5.2f}" in out
    assert run_app(["recommend", "--model", str(bundle_path), "--rate", "50:5"]) == 2
    assert run_app(["recommend", "--model", str(bundle_path), "--rate", "99999=5"]) == 2
    assert "99999" in capsys.readouterr().err


def test_melu_recommend_rates_by_title(bundle_path: Path, recommender: Recommender) -> None:
    """``--rate "Star Wars=5"`` finds the title as the page's search does; a title with no
    match or several equal ones is a usage error naming them; years are the titles'."""

    def melu(*rate: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
        argv = ["recommend", "--model", str(bundle_path), "--k", "5"]
        argv += [a for r in rate for a in ("--rate", r)] + (["--verbose"] if verbose else [])
        return subprocess.run(
            [sys.executable, "-m", "melu", *argv], capture_output=True, text=True, timeout=120
        )

    done = melu("Star Wars=5", "the godfather=4", "close shave=4.5", verbose=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "you rated 5: Star Wars (1977)",
        "you rated 4: Godfather, The (1972)",
        "you rated 4.5: Close Shave, A (1995)",  # the title's year (released in 1996)
    ]
    expected = recommender.recommend({}, [(50, 5.0), (127, 4.0), (408, 4.5)], k=5)
    table = [line.split()[1] for line in lines[4:9]]  # rank, id, title..., rating
    assert table == [str(i.item_id) for i in expected.items]
    assert "year" not in lines[3] and "support MSE" in done.stdout  # --verbose
    quiet = melu("50=5", "127=4", "408=4.5")
    assert quiet.returncode == 0 and "support MSE" not in quiet.stdout
    assert quiet.stdout.splitlines()[4:9] == lines[4:9]  # ids and titles: the same answer

    nothing = melu("xyzzy qwerty=5")
    assert nothing.returncode == 2 and "'xyzzy qwerty': no movie title matches" in nothing.stderr
    several = melu("star trek=5")
    assert several.returncode == 2 and "titles match it equally" in several.stderr
    assert "Star Trek" in several.stderr and "(id " in several.stderr
