"""``melu serve``: the HTTP service under uvicorn, checked before it starts (one worker, or a
supervisor of N that each load the bundle; ``melu recommend`` is ``melu.cli.recommend``)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from melu.bundle import find_bundle
from melu.cli.app import ModelOpt, app, fail
from melu.errors import BundleError, MeluError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
LOG_FORMATS = ("json", "text")


@app.command("serve")
def serve(
    model: ModelOpt,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help=f"one of {', '.join(LOG_LEVELS)}")] = "info",
    log_format: Annotated[
        str, typer.Option(help="json: one JSON object per line (log collectors); text: people")
    ] = "json",
    batch_wait_ms: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1000,
            help="ms a group of POST /v1/recommendations waiting for the model stays open "
            "for more after its first arrived; each group is one batched model call "
            "(0: only those already waiting; default MELU_BATCH_WAIT_MS, else 2)",
        ),
    ] = None,
    batch_requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="most POST /v1/recommendations in one group (1: one at a time; default "
            "MELU_BATCH_REQUESTS, else 32)",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (docs at /docs, onboarding page at /, metrics at /metrics).

    Each worker computes on one model thread; recommendations that arrive together are
    answered by one batched call (--batch-wait-ms, --batch-requests). Everything the
    server writes (uvicorn's lines, reloads, one line per request) goes to stderr in one
    format. Other settings: MELU_* environment variables (MELU_RELOAD_INTERVAL,
    MELU_MAX_BATCH, MELU_CORS_ORIGINS, ...). With --workers N > 1 the bundle is checked in a
    child process, then a light supervisor (no torch, no model) starts N workers that each
    load it; Prometheus metrics are aggregated over the workers through
    PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless it is set).
    """
    for value, allowed, flag in (
        (log_level, LOG_LEVELS, "--log-level"),
        (log_format, LOG_FORMATS, "--log-format"),
    ):
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: use one of {', '.join(allowed)}", param_hint=flag)
    if workers > 1:
        multiprocess_metrics()  # before prometheus_client is imported here or in a worker
    import logging.config

    from service.logs import log_config
    from service.protocol import limits
    from service.settings import Settings, from_env

    check_listen(host, port)
    grouping = {"MELU_BATCH_WAIT_MS": batch_wait_ms, "MELU_BATCH_REQUESTS": batch_requests}
    for name, given in grouping.items():
        if given is not None:  # the workers of --workers N read it from there too
            os.environ[name] = str(given)
    folder = find_bundle(model).absolute()  # not resolve(): a swapped symlink is a reload
    os.environ["MELU_MODEL"] = str(folder)
    settings = from_env(Settings, model=folder, host=host, port=port, workers=workers)
    limits()  # bad MELU_READ_TIMEOUT etc. fail here, before uvicorn starts
    logging_config = log_config(log_format, log_level)
    logging.config.dictConfig(logging_config)
    started = f"serving {folder} on http://{host}:{port} (docs: http://{host}:{port}/docs)"
    if workers == 1:
        from service.app import create_app, load

        loaded = load(settings)  # fail here, clearly, before uvicorn starts
        logging.getLogger("melu.service").info(started)
        _run_uvicorn(create_app(settings, loaded), host, port, 1, log_level, logging_config)
        return
    check_in_child(settings)  # the parent never holds a model it does not serve
    logging.getLogger("melu.service").info(started)
    options = {"host": host, "port": port, "workers": workers, "log_level": log_level}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(  # the supervisor: a fresh interpreter with uvicorn only (~50 MB, not ~500)
        sys.executable,
        [sys.executable, "-m", "service.supervise", json.dumps({**options, "log": log_format})],
    )


def check_listen(host: str, port: int) -> None:
    """Fail in one line (exit 1) unless ``host:port`` can be listened on now: an address
    that does not resolve or is not this machine's, or a port in use, would otherwise end
    uvicorn with its own lines and exit 3 (checked with a socket bound as uvicorn binds
    it, then closed)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise fail(f"cannot listen on {host}:{port} ({reason})") from None


def _run_uvicorn(
    app_or_factory: object, host: str, port: int, workers: int, level: str, config: dict[str, Any]
) -> None:
    from service.supervise import run

    run(app_or_factory, host=host, port=port, workers=workers, log_level=level, log_config=config)


def _check_bundle(path: str, threads: int) -> str | None:
    """In a child process: load and warm up the bundle; the error's line, or None."""
    from service.app import load
    from service.settings import Settings
    from service.slot import warm_up

    try:
        warm_up(load(Settings(model=Path(path), torch_threads=threads)))
    except MeluError as exc:
        return str(exc)
    return None


def check_in_child(settings: Any) -> None:
    """Load the bundle once in a spawned child (its memory goes back when it exits) and
    raise its ``BundleError`` here, before any worker starts."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        error = pool.submit(_check_bundle, str(settings.model), settings.torch_threads).result()
    if error is not None:
        raise BundleError(error)


def multiprocess_metrics() -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder (a fresh temporary one unless
    it is set; a set one is emptied of old ``*.db`` files, as prometheus-client requires)."""
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="melu-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):
        old.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder
