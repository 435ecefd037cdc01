"""``melu recommend --batch users.jsonl --out recs.jsonl``: many users, adapted together.

Each input line is a ``POST /v1/recommendations`` body (``user``, ``ratings``, ``k``,
``exclude_rated``, ``candidate_ids``), checked by the service's own schema, plus an optional
``id`` (a string or an integer: the caller's key for that user); each output line is that
user's answer (``id`` when given, ``items``, ``adaptation``), in input order. Users are recommended
``--batch-size`` at a time with ``Recommender.recommend_many`` (one batched adaptation per
chunk). Every line is checked before any work; a bad line stops the run with its line
number and field, and the output file is written only when every user is answered.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import typer
from pydantic import ValidationError

from melu.atomic import disk_full, no_space
from melu.cli.progress import Steps
from melu.errors import InvalidInput, format_loc
from melu.serving import Recommendations, Recommender, Request

Key = str | int | None  # the caller's key for one user (an input line's "id")


def read_requests(path: Path) -> list[tuple[Key, Request]]:
    """Every line of ``path`` as (its ``id``, a checked request); a bad line is a usage
    error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path}: cannot read it ({exc})", param_hint="--batch") from None
    requests = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                requests.append(read_line(line))
            except ValueError as exc:
                raise typer.BadParameter(
                    f"{path} line {number}: {exc}", param_hint="--batch"
                ) from None
    return requests


def read_line(line: str) -> tuple[Key, Request]:
    """One JSON line → (its ``id``, the request); ``ValueError`` names the field at fault."""
    from service.schemas import RecommendationRequest  # the HTTP API's own checks

    try:
        body = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    key = body.pop("id", None) if isinstance(body, dict) else None
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise ValueError(f"id: must be a string or an integer (got {key!r})")
    try:
        checked = RecommendationRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{format_loc(tuple(first['loc'])) or 'line'}: {first['msg']}") from None
    ratings = [(r.item_id, r.rating) for r in checked.ratings]
    user = checked.user.model_dump(exclude_none=True)
    request = Request(user, ratings, checked.k, checked.exclude_rated, checked.candidate_ids)
    return key, request


def answer(result: Recommendations, key: Key = None) -> dict[str, object]:
    """One output line: the user's ``id`` (when the input line had one), the ranked items
    and how adaptation went."""
    adaptation = asdict(result.adaptation)
    adaptation.pop("seconds")
    items = [{**asdict(item), "genres": list(item.genres)} for item in result.items]
    line: dict[str, object] = {} if key is None else {"id": key}
    return {**line, "items": items, "adaptation": adaptation}


def recommend_file(
    recommender: Recommender, source: Path, out: Path, batch_size: int, progress: bool = True
) -> int:
    """Answer every user of ``source`` into ``out`` (written atomically); returns the count.

    ``progress``: a bar on a terminal, else one line per ``batch_size`` users."""
    keyed = read_requests(source)
    keys, requests = [k for k, _ in keyed], [r for _, r in keyed]
    lines = [
        number for number, line in enumerate(source.read_text().splitlines(), 1) if line.strip()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(handle, "w", encoding="utf-8") as file,
            Steps(len(requests), "recommending", unit="users", enabled=progress) as bar,
        ):
            for lo in range(0, len(requests), batch_size):
                chunk = requests[lo : lo + batch_size]
                try:
                    results = recommender.recommend_many(chunk)
                except InvalidInput as exc:
                    index, *loc = exc.loc
                    raise typer.BadParameter(
                        f"{source} line {lines[lo + int(index)]}: {format_loc(tuple(loc))}: "
                        f"{exc.reason} (got {exc.value!r})",
                        param_hint="--batch",
                    ) from None
                for key, result in zip(keys[lo : lo + batch_size], results, strict=True):
                    file.write(json.dumps(answer(result, key)) + "\n")
                bar.update(len(chunk))
        os.replace(tmp, out)
    except BaseException as exc:
        full = disk_full(exc, out.parent)  # before the cleanup frees the space again
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise no_space(out) from exc
        raise
    return len(requests)
