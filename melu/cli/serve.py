"""``melu serve`` (the HTTP service under uvicorn) and ``melu recommend`` (one new user)."""

from __future__ import annotations

import math
import os
import re
import socket
from pathlib import Path
from typing import Annotated

import typer

from melu.bundle import find_bundle
from melu.cli.app import app, echo, fail
from melu.data.parsing import ID_MAX, INTEGER
from melu.serving import InvalidInput, Recommendations, Recommender

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]  # uvicorn's

ModelOpt = Annotated[
    Path,
    typer.Option("--model", help="Run folder (runs/NAME) or its model/ bundle folder."),
]


def parse_rating(text: str) -> tuple[int, float]:
    """``"50=5"`` → ``(50, 5.0)``: an item id 0..2³¹−1 (as ids are stored) and a finite
    rating; anything else is a usage error."""
    item, sep, value = text.partition("=")
    try:
        if not sep or not re.fullmatch(INTEGER, item.strip()):
            raise ValueError
        item_id, rating = int(item), float(value)
        if not 0 <= item_id <= ID_MAX or not math.isfinite(rating):
            raise ValueError
        return item_id, rating
    except ValueError:
        raise typer.BadParameter(
            f"{text[:80]!r} is not ITEM_ID=RATING (an id 0..{ID_MAX}, e.g. 50=5)",
            param_hint="--rate",
        ) from None


def format_table(result: Recommendations) -> str:
    """The recommendations as an aligned text table: rank, id, title, year, score."""
    lines = [f"{'#':>3}  {'id':>6}  {'title':<50}  {'year':>4}  {'score':>5}"]
    for rank, item in enumerate(result.items, 1):
        title = item.title if len(item.title) <= 50 else item.title[:47] + "..."
        year = "" if item.year is None else str(item.year)
        lines.append(f"{rank:>3}  {item.item_id:>6}  {title:<50}  {year:>4}  {item.score:>5.2f}")
    info = result.adaptation
    if info.steps:
        lines.append(
            f"adapted in {info.steps} steps: support MSE {info.support_loss_before:.3f}"
            f" → {info.support_loss_after:.3f}"
        )
    else:
        lines.append("no ratings given: ranked from the user's features only")
    return "\n".join(lines)


def print_recommendations(
    model: Path | str | Recommender,
    ratings: list[tuple[int, float]],
    user: dict[str, object] | None = None,
    k: int = 10,
) -> Recommendations:
    """Print what the user rated and the top-``k`` table for them; returns the result.

    ``model``: a run folder, its ``model/`` bundle folder, or a loaded ``Recommender``.
    """
    recommender = (
        model
        if isinstance(model, Recommender)
        else Recommender.from_bundle(find_bundle(Path(model)), onboarding=False)
    )
    try:
        result = recommender.recommend(user or {}, ratings, k=k)
    except InvalidInput as exc:
        raise typer.BadParameter(str(exc)) from None
    rows = recommender.catalog.rows([item_id for item_id, _ in ratings], ("--rate",)).tolist()
    for row, (_, value) in zip(rows, ratings, strict=True):
        echo(f"you rated {value:g}: {recommender.catalog.titles[row]}")
    echo(format_table(result))
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
        list[str] | None, typer.Option(help="ITEM_ID=RATING, repeatable (e.g. --rate 50=5).")
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
) -> None:
    """Recommend movies for a new user from a few ratings (adapts the model first), or for
    every user of a JSON-lines file with --batch (adapted together, a progress bar)."""
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
        count = recommend_file(recommender, batch, out, batch_size)
        echo(f"{count} users answered → {out}")
        return
    ratings = [parse_rating(r) for r in rate or []]
    user = {"gender": gender, "age": age, "occupation": occupation, "zip": zip_code}
    print_recommendations(model, ratings, {k: v for k, v in user.items() if v is not None}, k)


@app.command("serve")
def serve(
    model: ModelOpt,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[
        str, typer.Option(help=f"uvicorn log level: {', '.join(LOG_LEVELS)}")
    ] = "info",
) -> None:
    """Serve the HTTP API (docs at /docs, onboarding page at /, metrics at /metrics).

    Other settings: MELU_* environment variables (MELU_RELOAD_INTERVAL, MELU_MAX_BATCH, ...).
    With --workers N > 1, Prometheus metrics are aggregated over the workers through
    PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless it is set).
    """
    if workers > 1:
        multiprocess_metrics()  # before prometheus_client is imported here or in a worker
    import uvicorn

    from service.app import create_app, load
    from service.protocol import GuardedHttpToolsProtocol, limits
    from service.settings import Settings, from_env

    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"{log_level[:40]!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="--log-level"
        )
    log_level = log_level.lower()
    check_listen(host, port)
    folder = find_bundle(model).absolute()  # not resolve(): a swapped symlink is a reload
    os.environ["MELU_MODEL"] = str(folder)
    settings = from_env(Settings, model=folder, host=host, port=port, workers=workers)
    limits()  # bad MELU_READ_TIMEOUT etc. fail here, before uvicorn starts
    loaded = load(settings)  # fail here, clearly, before uvicorn starts
    echo(f"serving {folder} on http://{host}:{port} (docs: http://{host}:{port}/docs)")
    if workers == 1:
        uvicorn.run(
            create_app(settings, loaded),
            host=host,
            port=port,
            log_level=log_level,
            http=GuardedHttpToolsProtocol,
            access_log=False,  # the app writes one JSON line per request (melu.access)
        )
        return
    del loaded  # each worker process loads its own copy from MELU_MODEL
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        http=GuardedHttpToolsProtocol,
        access_log=False,
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
