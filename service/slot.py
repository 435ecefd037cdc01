"""The served model and its replacement without downtime.

``ModelSlot`` holds the ``Loaded`` model that new requests get. A request takes the slot's
model once (a dependency) and keeps that reference to the end, so a swap never changes
the model under a request in flight; the old model is freed when its last request ends.

Reload is polled: every ``MELU_RELOAD_INTERVAL`` seconds (0 turns it off) each worker
compares a cheap signature of ``MELU_MODEL`` (the resolved folder and every file's size,
mtime and inode) with the one it loaded. On a change the new bundle is loaded and warmed
up (one recommendation, the onboarding ranking) beside the old one in a worker thread and
only then swapped in by one reference assignment. A bundle that fails to load or to warm
up is refused: an error is logged, ``melu_model_reloads_total{outcome="refused"}`` counts
it, the old model keeps serving, and that signature is not tried again (the next change
is). Polling rather than SIGHUP because uvicorn's multi-worker supervisor takes SIGHUP to
restart its workers; a poll works the same in every worker, in Docker and behind a
symlink swap (``ln -sfn new-bundle model.next && mv -T model.next model``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from melu.errors import MeluError
from service.deps import Loaded

log = logging.getLogger("melu.service")

Signature = tuple[str, tuple[tuple[str, int, int, int], ...]]


def bundle_folder(path: Path) -> Path:
    """``path`` itself or the ``model/`` of a run folder (as ``find_bundle``, read-only)."""
    if not (path / "config.json").is_file() and (path / "model").is_dir():
        return path / "model"
    return path


def signature(path: Path) -> Signature | None:
    """What a change of the bundle at ``path`` changes: the resolved folder and each file's
    (name, size, mtime, inode); ``None`` when there is no folder to read."""
    try:
        folder = bundle_folder(path).resolve()
        files = sorted(folder.iterdir())
        stats = tuple(
            (f.name, s.st_size, s.st_mtime_ns, s.st_ino)
            for f in files
            if f.is_file() and (s := f.stat())
        )
    except OSError:
        return None
    return str(folder), stats


def warm_up(loaded: Loaded) -> None:
    """One request through the whole path (adapt, score, rank) and the onboarding ranking,
    so the first real request pays no one-time cost and a broken bundle fails here."""
    recommender = loaded.recommender
    first = recommender.onboarding_items(3)
    ratings = [(item.item_id, recommender.scale[1]) for item in first[:2]]
    result = recommender.recommend({"gender": "F", "age": 30}, ratings, k=5)
    if not result.items or not all(_finite(i.score) for i in result.items):
        raise MeluError(f"{loaded.version}: warm-up recommendation gave no finite scores")


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


class ModelSlot:
    """The current model (``None`` until loaded), whether it is warmed up, and reloads."""

    def __init__(self, path: Path, load: Callable[[Path], Loaded]) -> None:
        self.path = path
        self._load = load
        self.current: Loaded | None = None
        self.ready = False
        self.failure: str | None = None  # why the start-up model failed its warm-up
        self.seen: Signature | None = None  # the signature last loaded or refused
        self._reloading = threading.Lock()
        self.on_swap: Callable[[Loaded | None, Loaded, str], None] | None = None

    def install(self, loaded: Loaded) -> None:
        """Serve ``loaded`` (already checked) from now on; new requests get it."""
        previous, self.current = self.current, loaded
        if self.on_swap is not None:
            self.on_swap(previous, loaded, "swapped" if previous else "loaded")

    def start(self, loaded: Loaded) -> None:
        """The model start-up loaded: served at once, ready after ``warm`` has run."""
        self.seen = signature(self.path)
        self.install(loaded)

    def warm(self) -> None:
        """Warm the current model up, then mark the slot ready (``GET /ready`` → 200)."""
        assert self.current is not None
        try:
            warm_up(self.current)
        except Exception as exc:
            self.failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            raise
        self.ready, self.failure = True, None

    def check(self) -> str:
        """Reload if the bundle changed: returns "unchanged", "swapped" or "refused"."""
        with self._reloading:
            now = signature(self.path)
            if now is None or now == self.seen:
                return "unchanged"
            self.seen = now
            started = time.perf_counter()
            try:
                candidate = self._load(Path(now[0]))  # the folder the signature is of
                warm_up(candidate)
            except Exception as exc:  # whatever breaks the new bundle, the old one serves on
                old = self.current.version if self.current else None
                log.error(
                    "model reload refused: %s: %s (still serving %s)",
                    type(exc).__name__, exc, old,
                )  # fmt: skip
                if self.on_swap is not None and self.current is not None:
                    self.on_swap(self.current, self.current, "refused")
                return "refused"
            old = self.current.version if self.current else None
            self.install(candidate)
            self.ready, self.failure = True, None
            log.warning(
                "model reloaded: %s → %s in %.2f s",
                old, candidate.version, time.perf_counter() - started,
            )  # fmt: skip
            return "swapped"

    async def poll(self, interval: float) -> None:
        """Check for a new bundle every ``interval`` seconds, forever (a lifespan task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a reload must never stop the poll or the server
                log.exception("model reload check failed")
