"""A small trained ML-100K bundle for the recommender and service tests.

``train_bundle`` runs a few Adam steps on ``melu.model.maml.meta_loss`` and saves the bundle with
``melu.bundle.save_bundle``. ``bundle_path`` builds it once per ``pytest`` run
(``built_once``: the fixture module is imported by several test files on several workers,
each of which would otherwise build its own copy).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from built_once import built_once
from fastapi.testclient import TestClient

from melu.bundle import save_bundle
from melu.config import Config
from melu.model.estimator import PreferenceEstimator
from melu.model.maml import meta_loss, task_examples
from melu.prepare import Prepared
from melu.serving import Recommender
from melu.training.rank_train import train_ranking
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

_RECOMMENDERS: dict[Path, Recommender] = {}


def train_bundle(prepared: Prepared, out: Path, *, steps: int = 12, seed: int = 0) -> Path:
    """A bundle after ``steps`` meta-batches (8 tasks, second order) of Adam and the ranking
    head's part weights picked in one pass (no likelihood epochs, as the default); returns
    it."""
    config = Config().replace(data=prepared.config)
    torch.manual_seed(seed)
    model = PreferenceEstimator(config.model, prepared.features)
    params = {k: v.requires_grad_() for k, v in model.init_params().items()}
    optimiser = torch.optim.Adam(params.values(), lr=config.train.outer_lr * 5)
    tasks = prepared.tasks["train"]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(tasks.user_rows), (8,), generator=generator)
        support, query = task_examples(tasks, prepared.tables, index)
        loss, _, _ = meta_loss(
            model,
            params,
            support,
            query,
            steps=config.meta.inner_steps,
            lr=config.meta.inner_lr,
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    rating = {k: v.detach() for k, v in params.items() if not k.startswith("rank.")}
    short = config.replace(train=config.train.replace(rank_epochs=0, rank_mix_passes=1))  # briefly
    head = train_ranking(short, model, rating, prepared, torch.device("cpu"), config.meta.inner_lr)
    params = {**rating, **head.params}
    save_bundle(
        out,
        config=config,
        features=prepared.features,
        params={k: v.detach() for k, v in params.items()},
        catalog=prepared.catalog,
        tables=prepared.tables,
        metrics={"note": "test bundle", "steps": steps},
        fingerprint=prepared.fingerprint,
    )
    return out


@pytest.fixture(scope="session")
def bundle_path(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained ML-100K bundle folder (``run/model``), built once per ``pytest`` run."""

    def build(folder: Path) -> None:
        train_bundle(ml100k, folder / "model")

    return built_once(tmp_path_factory, "service-run", build) / "model"


@pytest.fixture(scope="session")
def recommender(bundle_path: Path) -> Recommender:
    """One Recommender over ``bundle_path`` (1 torch thread, as served), shared by all."""
    if bundle_path not in _RECOMMENDERS:
        _RECOMMENDERS[bundle_path] = Recommender.from_bundle(bundle_path, threads=1)
    return _RECOMMENDERS[bundle_path]


def wait_ready(get: Callable[[str], int], seconds: float = 60) -> None:
    """Poll ``get("/ready")`` (a status code) until 200: model routes answer 503 before."""
    deadline = time.monotonic() + seconds
    while get("/ready") != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready")
        time.sleep(0.02)


# one person's request, as the service tests send it
BODY = {"user": {"gender": "F"}, "ratings": [{"item_id": 50, "rating": 5}], "k": 3}


def wait_client_ready(client: TestClient) -> None:
    """``wait_ready`` through a ``fastapi.testclient.TestClient``."""
    wait_ready(lambda path: client.get(path).status_code)


@pytest.fixture(scope="module")
def client(bundle_path: Path, recommender: Recommender) -> Iterator[TestClient]:
    """A ready ``TestClient`` of the app over ``recommender`` (no reloading), per module."""
    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, reload_interval=0), loaded)
    with TestClient(app) as test_client:
        wait_client_ready(test_client)
        yield test_client


def point(link: Path, target: Path) -> None:
    """Swap the symlink ``link`` to ``target`` atomically (as an operator would)."""
    tmp = link.with_name(link.name + ".next")
    tmp.symlink_to(target)
    tmp.replace(link)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def serve_in_thread(app: object, port: int | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(lambda path: _status(url + path))
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two JSON recommendation answers agree up to float rounding: scores (predicted
    ratings) equal position by position within 1e-5, support losses within 1e-4 relative,
    and the same items in the same order but for ties (where the items differ, ``a``'s item
    has the same score in ``b``, or ``b``'s last score: a tie group cut at the end)."""
    x = [(i["item_id"], i["score"]) for i in a["items"]]
    y = [(i["item_id"], i["score"]) for i in b["items"]]
    if len(x) != len(y) or any(abs(s - t) > 1e-5 for (_, s), (_, t) in zip(x, y, strict=True)):
        return False
    for name in ("support_loss_before", "support_loss_after"):
        u, v = a["adaptation"][name], b["adaptation"][name]
        if (u is None) != (v is None) or (u is not None and abs(u - v) > 1e-4 * abs(v)):
            return False
    scores = dict(y)
    return a["adaptation"]["steps"] == b["adaptation"]["steps"] and all(
        i == j or abs(scores.get(i, y[-1][1]) - s) <= 1e-5
        for (i, s), (j, _) in zip(x, y, strict=True)
    )
