"""Your own data (``--ratings FILE [--items FILE] [--users FILE]``): the reader's strict
parsing, and a tiny CSV end to end through ``melu train``, ``evaluate`` and ``serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from service_fixtures import free_port

from melu.config import DataConfig
from melu.data.own import read_own
from melu.errors import DataError

GENRES = ("Drama", "Comedy", "Action", "Sci-Fi")


def write_files(folder: Path, n_users: int = 60, n_items: int = 40, per_user: int = 25) -> Path:
    """ratings.csv (two tastes, seeded), items.csv (titles with commas, genres, years) and
    users.csv (gender, age, occupation, zip) in ``folder``."""
    rng = np.random.default_rng(0)
    taste, kind = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    rows, stamp = [], 1_000_000
    for user in range(n_users):
        for item in rng.choice(n_items, size=per_user, replace=False):
            stamp += int(rng.integers(1, 100))
            rating = int(np.clip(np.round(3 + taste[user] @ kind[item]), 1, 5))
            rows.append(f"{user + 1},{item + 1},{rating},{stamp}")
    (folder / "ratings.csv").write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    items = [f'{i},"Film {i}, The",{GENRES[i % 4]}|{GENRES[(i + 1) % 4]},{1980 + i}'
             for i in range(1, n_items + 1)]  # fmt: skip
    (folder / "items.csv").write_text("item,title,genres,year\n" + "\n".join(items) + "\n")
    users = [f"{u},{'FM'[u % 2]},{15 + u % 50},student,{10000 + u}" for u in range(1, n_users + 1)]
    (folder / "users.csv").write_text("user,gender,age,occupation,zip\n" + "\n".join(users) + "\n")
    return folder


def own(folder: Path, **files: str) -> DataConfig:
    return DataConfig(**{k: str(folder / v) for k, v in files.items()})


def test_csv_and_parquet_read_to_the_same_frames(tmp_path: Path) -> None:
    write_files(tmp_path)
    csv = read_own(own(tmp_path, ratings="ratings.csv", items="items.csv", users="users.csv"))
    for name in ("ratings", "items", "users"):
        pd.read_csv(tmp_path / f"{name}.csv").to_parquet(tmp_path / f"{name}.parquet")
    pq = read_own(own(tmp_path, ratings="ratings.parquet", items="items.parquet",
                      users="users.parquet"))  # fmt: skip
    assert csv.name == "own" and len(csv.ratings) == 60 * 25 and csv.rating_scale == (1.0, 5.0)
    pd.testing.assert_frame_equal(csv.ratings, pq.ratings)
    pd.testing.assert_frame_equal(csv.users, pq.users)
    assert csv.items["title"].iloc[0] == "Film 1, The" and csv.items["genres"].iloc[0] == [
        "Comedy", "Action"]  # fmt: skip
    assert csv.items["year"].tolist() == pq.items["year"].tolist() == list(range(1981, 2021))
    assert set(csv.users["age"]) <= {"1", "18", "25", "35", "45", "50", "56"}  # MovieLens buckets


def test_ratings_alone_are_enough(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4.5\n1,11,2\n2,10,3\n")
    data = read_own(own(tmp_path, ratings="r.csv"))
    assert data.rating_step == 0.5 and list(data.users.columns) == ["user_id"]
    assert data.items["title"].tolist() == ["item 10", "item 11"]
    assert data.ratings["timestamp"].tolist() == [0, 1, 2]  # the file's order is the time
    config = own(tmp_path, ratings="r.csv")
    assert config.dataset == "own" and Path(str(config.ratings)).is_absolute()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.csv", "user,item,rating\n1,2,4\n1,x,3\n", r"r.csv:3: malformed row: '1,x,3'"),
        ("r.csv", "user,movie,rating\n1,2,4\n", r"r.csv:1: unknown column 'movie'"),
        ("r.csv", "user,item\n1,2\n", r"r.csv:1: no rating column"),
        ("r.csv", "", r"r.csv:1: no header line"),
        ("r.csv", "user,item,rating\n", r"r.csv: no ratings"),
        ("r.csv", "user,item,rating\n1,2,4\n1,3,nan\n", r"r.csv:3: malformed row"),
        ("r.csv", "user,item,rating\n1,2,4\n1,3,3.7\n", r"r.csv:3: rating 3.7 is not in whole"),
        ("r.csv", "user,item,rating\n1,2,4\n-1,3,3\n", r"r.csv:3: user_id -1 is outside"),
        ("items.csv", "item,title,year\n2,A,1990\n2,B,1991\n", r"items.csv:3: item_id 2 appears twice"),
        ("items.csv", "item,title,year\n2,A,19x0\n", r"items.csv:2: year '19x0' is not a whole"),
        ("users.csv", "user,age\n1,20\n2,200\n", r"users.csv:3: age 200 is outside"),
    ],
)  # fmt: skip
def test_a_bad_file_is_an_error_naming_its_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / "r.csv").write_text("user,item,rating\n1,2,4\n1,3,5\n")
    (tmp_path / name).write_text(text)
    files = {"ratings": "r.csv", **({} if name == "r.csv" else {name.split(".")[0]: name})}
    with pytest.raises(DataError, match=message):
        read_own(own(tmp_path, **files))


def test_parquet_rows_are_checked_as_strictly(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": [1, 2], "item": [3.0, 3.5], "rating": [4, 5]})
    frame.to_parquet(tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r.parquet:2: item_id 3.5 is not a whole number"):
        read_own(own(tmp_path, ratings="r.parquet"))
    with pytest.raises(DataError, match=r"nope.csv: no such file \(--ratings\)"):
        read_own(own(tmp_path, ratings="nope.csv"))


def melu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "melu", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)  # fmt: skip


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_own_csv_end_to_end_train_evaluate_serve(tmp_path: Path) -> None:
    files = tmp_path / "mine"
    files.mkdir()
    write_files(files)
    data = ("--ratings", "mine/ratings.csv", "--items", "mine/items.csv", "--users",
            "mine/users.csv", "--cache-dir", "cache")  # fmt: skip
    trained = melu("train", *data, "--epochs", "2", "--out", "run", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["config"]
    assert config["data"]["dataset"] == "own"
    assert config["data"]["ratings"] == str(files / "ratings.csv")  # absolute: works anywhere

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = melu("evaluate", "--model", str(tmp_path / "run"), "--cache-dir", "cache",
                     "--scenarios", "warm,user_cold", cwd=elsewhere)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "user_cold" in evaluated.stdout and (tmp_path / "run" / "eval" / "report.md").is_file()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "melu", "serve", "--model", "run", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/ready", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "melu serve did not get ready"
                time.sleep(0.2)
        body = {"user": {"gender": "F", "age": 30}, "ratings": [
            {"item_id": 1, "rating": 5}, {"item_id": 2, "rating": 1}], "k": 5}  # fmt: skip
        answer = post(f"{base}/v1/recommendations", body)
    finally:
        server.terminate()
        server.wait(timeout=30)
    items = answer["items"]
    assert isinstance(items, list) and len(items) == 5
    assert {item["item_id"] for item in items}.isdisjoint({1, 2})
    first = items[0]
    assert first["title"] == f"Film {first['item_id']}, The" and first["genres"]
