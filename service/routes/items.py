"""GET /v1/items: search and browse the catalog."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import LoadedDep, SettingsDep
from service.schemas import ERRORS, Item, ItemPage

router = APIRouter(prefix="/v1", tags=["items"])


@router.get("/items", response_model=ItemPage, responses=ERRORS)
def items(
    loaded: LoadedDep,
    settings: SettingsDep,
    search: Annotated[
        str | None, Query(max_length=200, description="title words, forgiving typos")
    ] = None,
    genre: Annotated[str | None, Query(max_length=100, description="exact genre")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ItemPage:
    """Catalog items whose title matches `search` and whose genres include `genre`
    (case-insensitive); `limit` is capped by MELU_MAX_PAGE.

    `search` ignores case, accents, punctuation, spaces and articles ("the godfather"
    finds "Godfather, The (1972)", "starwars" finds "Star Wars (1977)") and tolerates typos
    ("shawshenk"); the best matches come first. Without `search`, items in id order."""
    page = loaded.recommender.catalog.search(
        search, genre, limit=min(limit, settings.max_page), offset=offset
    )
    return ItemPage(
        total=page.total,
        limit=page.limit,
        offset=page.offset,
        items=[
            Item(item_id=i.item_id, title=i.title, year=i.year, genres=list(i.genres))
            for i in page.items
        ],
    )
