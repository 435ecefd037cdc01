"""``melu serve`` (the HTTP service under uvicorn) and ``melu recommend`` (one new user)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from melu.bundle import find_bundle
from melu.cli.app import Threads, app, echo, fail, use_threads
from melu.data.parsing import ID_MAX
from melu.errors import BundleError, MeluError
from melu.serving import InvalidInput, Item, Recommendations, Recommender

TITLE_YEAR = re.compile(r"\(\d{4}\)\s*$")  # MovieLens titles end with their year


ModelOpt = Annotated[
    Path,
    typer.Option("--model", help="Run folder (runs/NAME) or its model/ bundle folder."),
]


def parse_rating(text: str) -> tuple[int | str, float]:
    """``"50=5"`` → ``(50, 5.0)``, ``"Star Wars=5"`` → ``("Star Wars", 5.0)`` (a title,
    found by :func:`resolve_ratings`); anything else is a usage error."""
    item, sep, value = text.rpartition("=")
    item = item.strip()
    try:
        if not sep or not item or not math.isfinite(rating := float(value)):
            raise ValueError
        if item.isdigit() and int(item) > ID_MAX:  # ids are stored as int32
            raise ValueError
        return (int(item) if item.isdigit() else item), rating
    except ValueError:
        raise typer.BadParameter(
            f"{text[:80]!r} is not ITEM=RATING with an id 0..{ID_MAX} or a title and a "
            "finite rating (e.g. 50=5, 'Star Wars=5')",
            param_hint="--rate",
        ) from None


def resolve_ratings(
    recommender: Recommender, given: Sequence[tuple[int | str, float]]
) -> list[tuple[int, float]]:
    """Titles → item ids with the catalog's search (:meth:`Catalog.find`); a title that
    matches nothing, or several movies equally, is a usage error naming them."""
    catalog = recommender.catalog
    out = []
    for item, value in given:
        if isinstance(item, str):
            try:
                item = int(catalog.item_ids[catalog.find(item, ("--rate",))])
            except InvalidInput as exc:
                hint = " (give its id, or more of its title, e.g. with the year)"
                raise typer.BadParameter(
                    f"{item!r}: {exc.reason}{hint}", param_hint="--rate"
                ) from None
        out.append((item, value))
    return out


def shown_title(item: Item) -> str:
    """The title with the year it carries ("Close Shave, A (1995)"), or with the catalog's
    year appended when it has none: the year people know a film by. The catalog's ``year``
    can be the release date's (ML-100K: A Close Shave (1995), released 1996)."""
    if item.year is None or TITLE_YEAR.search(item.title):
        return item.title
    return f"{item.title} ({item.year})"


def format_table(result: Recommendations, verbose: bool = False) -> str:
    """The recommendations as an aligned text table: rank, id, title (with its year),
    predicted rating; ``verbose`` adds how adaptation went (support MSE before → after)."""
    lines = [f"{'#':>3}  {'id':>6}  {'title':<60}  {'rating':>6}"]
    for rank, item in enumerate(result.items, 1):
        title = shown_title(item)
        title = title if len(title) <= 60 else title[:57] + "..."
        lines.append(f"{rank:>3}  {item.item_id:>6}  {title:<60}  {item.score:>6.2f}")
    info = result.adaptation
    if not info.steps:
        lines.append("no ratings given: ranked from what you told about yourself only")
    elif verbose:
        lines.append(
            f"adapted in {info.steps} steps: support MSE {info.support_loss_before:.3f}"
            f" → {info.support_loss_after:.3f}"
        )
    return "\n".join(lines)


def print_recommendations(
    model: Path | str | Recommender,
    ratings: Sequence[tuple[int | str, float]],
    user: dict[str, object] | None = None,
    k: int = 10,
    verbose: bool = False,
) -> Recommendations:
    """Print what the user rated and the top-``k`` table for them; returns the result.

    ``model``: a run folder, its ``model/`` bundle folder, or a loaded ``Recommender``;
    ``ratings``: (item id or title, rating) pairs.
    """
    recommender = (
        model
        if isinstance(model, Recommender)
        else Recommender.from_bundle(find_bundle(Path(model)), onboarding=False)
    )
    rated = resolve_ratings(recommender, ratings)
    try:
        result = recommender.recommend(user or {}, rated, k=k)
    except InvalidInput as exc:
        raise typer.BadParameter(str(exc)) from None
    rows = recommender.catalog.rows([item_id for item_id, _ in rated], ("--rate",)).tolist()
    for row, (_, value) in zip(rows, rated, strict=True):
        echo(f"you rated {value:g}: {shown_title(recommender.catalog.item(row))}")
    echo(format_table(result, verbose))
    return result


def print_sample_recommendations(model: Path | str, k: int = 10) -> Recommendations:
    """A sample new user (F, 25) rates the first three onboarding items 5, 4 and 2; print
    the top ``k`` for them (the end of ``melu quickstart``)."""
    recommender = Recommender.from_bundle(find_bundle(Path(model)), onboarding=True)
    asked = [item.item_id for item in recommender.onboarding_items(3)]
    ratings = list(zip(asked, (5.0, 4.0, 2.0), strict=False))
    return print_recommendations(recommender, ratings, {"gender": "F", "age": 25}, k)


@app.command("recommend")
def recommend(
    model: ModelOpt,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            help="ITEM=RATING, repeatable; ITEM is an id or a title, found as the page's "
            "search does (e.g. --rate 50=5 --rate 'the godfather=4')."
        ),
    ] = None,
    gender: Annotated[str | None, typer.Option(help="e.g. F or M")] = None,
    age: Annotated[int | None, typer.Option(min=0, max=150, help="age in years")] = None,
    occupation: Annotated[str | None, typer.Option(help="e.g. student")] = None,
    zip_code: Annotated[str | None, typer.Option("--zip", help="zip / postal code")] = None,
    k: Annotated[int, typer.Option(min=1, help="how many items")] = 10,
    batch: Annotated[
        Path | None,
        typer.Option(help="JSON lines, one POST /v1/recommendations body per user (needs --out)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="--batch: where to write one answer per line.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="--batch: users adapted together per pass")
    ] = 256,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="also say how adaptation went (support MSE)")
    ] = False,
    threads: Threads = 1,
    progress: Annotated[
        bool, typer.Option(help="--batch: a line per pass (a bar on a terminal).")
    ] = True,
) -> None:
    """Recommend movies for a new user from a few ratings (adapts the model first), or for
    every user of a JSON-lines file with --batch (adapted together, a progress bar).

    Titles are shown with the year in the title (the film's year); the catalog's year
    field can be the release date's instead (ML-100K), so it is not shown apart.
    """
    use_threads(threads)
    if batch is not None:
        from melu.cli.batch import recommend_file

        if out is None:
            raise typer.BadParameter(
                "--batch needs --out (where the answers go)", param_hint="--out"
            )
        if rate or gender or age is not None or occupation or zip_code:
            raise typer.BadParameter(
                "with --batch each line carries its own user and ratings", param_hint="--rate"
            )
        recommender = Recommender.from_bundle(find_bundle(model), onboarding=False)
        count = recommend_file(recommender, batch, out, batch_size, progress)
        echo(f"{count} users answered → {out}")
        return
    ratings = [parse_rating(r) for r in rate or []]
    user = {"gender": gender, "age": age, "occupation": occupation, "zip": zip_code}
    known: dict[str, object] = {k: v for k, v in user.items() if v is not None}
    print_recommendations(model, ratings, known, k, verbose)


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
