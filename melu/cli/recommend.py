"""``melu recommend``: recommendations for one new user from a few ratings (or a file of users).

Parses ``ITEM=RATING`` (an id, or a title found as the page's search finds it), adapts
the bundle to them and prints the top items as a table; ``melu quickstart`` ends with
``print_sample_recommendations``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from melu.bundle import find_bundle
from melu.cli.app import ModelOpt, Threads, app, echo, use_threads
from melu.data.parsing import ID_MAX
from melu.serving import InvalidInput, Item, Recommendations, Recommender

TITLE_YEAR = re.compile(r"\(\d{4}\)\s*$")  # MovieLens titles end with their year


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
