"""``melu recommend --batch users.jsonl --out recs.jsonl``: many users, adapted together.

Each input line is a ``POST /v1/recommendations`` body (``user``, ``ratings``, ``k``,
``exclude_rated``, ``candidate_ids``), checked by the service's own schema; each output line
is that user's answer (``items``, ``adaptation``), in input order. Users are recommended
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
from tqdm import tqdm

from melu.atomic import disk_full, no_space
from melu.errors import InvalidInput, format_loc
from melu.serving import Recommendations, Recommender, Request


def read_requests(path: Path) -> list[Request]:
    """Every line of ``path`` as a checked request; a bad line is a usage error naming it."""
    from service.schemas import RecommendationRequest  # the HTTP API's own checks

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path}: cannot read it ({exc})", param_hint="--batch") from None
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = RecommendationRequest.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = format_loc(tuple(first["loc"])) or "line"
            raise typer.BadParameter(
                f"{path} line {number}: {where}: {first['msg']}", param_hint="--batch"
            ) from None
        ratings = [(r.item_id, r.rating) for r in body.ratings]
        user = body.user.model_dump(exclude_none=True)
        requests.append(Request(user, ratings, body.k, body.exclude_rated, body.candidate_ids))
    return requests


def answer(result: Recommendations) -> dict[str, object]:
    """One output line: the ranked items and how adaptation went."""
    adaptation = asdict(result.adaptation)
    adaptation.pop("seconds")
    items = [{**asdict(item), "genres": list(item.genres)} for item in result.items]
    return {"items": items, "adaptation": adaptation}


def recommend_file(recommender: Recommender, source: Path, out: Path, batch_size: int) -> int:
    """Answer every user of ``source`` into ``out`` (written atomically); returns the count."""
    requests = read_requests(source)
    lines = [
        number for number, line in enumerate(source.read_text().splitlines(), 1) if line.strip()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(handle, "w", encoding="utf-8") as file,
            tqdm(total=len(requests), unit="users", desc="recommending") as bar,
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
                for result in results:
                    file.write(json.dumps(answer(result)) + "\n")
                bar.update(len(chunk))
        os.replace(tmp, out)
    except BaseException as exc:
        full = disk_full(exc, out.parent)  # before the cleanup frees the space again
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise no_space(out) from exc
        raise
    return len(requests)
