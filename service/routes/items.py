"""GET /v1/items: search and browse the catalog."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query

from service.deps import LoadedDep, SettingsDep
from service.schemas import ERRORS, Item, ItemPage

router = APIRouter(prefix="/v1", tags=["items"])


@router.get("/items", response_model=ItemPage, responses=ERRORS)
def items(
    loaded: LoadedDep,
    settings: SettingsDep,
    search: Annotated[str | None, Query(max_length=200, description="title substring")] = None,
    genre: Annotated[str | None, Query(max_length=100, description="exact genre")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ItemPage:
    """Catalog items in id order whose title contains `search` (case-insensitive) and whose
    genres include `genre` (case-insensitive); `limit` is capped by MELU_MAX_PAGE."""
    rec = loaded.recommender
    keep = np.ones(rec.n_items, dtype=bool)
    if search:
        needle = search.casefold()
        keep &= np.array([needle in t.casefold() for t in rec.titles])
    if genre:
        wanted = genre.casefold()
        keep &= np.array([any(g.casefold() == wanted for g in gs) for gs in rec.genres])
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(rec.item_ids[rows], kind="stable")]
    limit = min(limit, settings.max_page)
    page = rows[offset : offset + limit]
    return ItemPage(
        total=len(rows),
        limit=limit,
        offset=offset,
        items=[
            Item(
                item_id=int(rec.item_ids[r]),
                title=rec.titles[r],
                year=rec.years[r],
                genres=list(rec.genres[r]),
            )
            for r in page
        ],
    )
