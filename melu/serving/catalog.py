"""Catalog: the items a bundle can recommend, addressed by catalog row.

Looks data set item ids up and checks a person's ratings of them (unknown or repeated
ids, ratings off the scale raise ``InvalidInput`` at their location), describes rows as
typed items, and searches (``melu.serving.search``) and browses titles and genres for
``GET /v1/items`` and ``melu recommend --rate TITLE=5``. Knows nothing about the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from melu.errors import InvalidInput, Loc
from melu.serving.search import TitleIndex
from melu.serving.types import Item, ItemPage, Ratings


class Catalog:
    """Item ids, titles, years, genres and training rating counts, one entry per row."""

    def __init__(self, frame: pd.DataFrame) -> None:
        """``frame``: the bundle's catalog (``item_id, title, year, genres, n_ratings``)."""
        self.item_ids = frame["item_id"].to_numpy(dtype=np.int64)  # (I,)
        self.titles = frame["title"].astype(str).tolist()
        self.years = [None if pd.isna(y) else int(y) for y in frame["year"]]
        self.genres = [tuple(str(g) for g in v) for v in frame["genres"]]
        self.n_ratings = frame["n_ratings"].to_numpy(dtype=np.int64)  # (I,)
        order = np.argsort(self.item_ids, kind="stable")
        self._sorted_ids, self._sorted_rows = self.item_ids[order], order
        self._titles = TitleIndex(self.titles, self.n_ratings)  # search keys, built once
        self._items = [  # described once: answers name their items without rebuilding them
            Item(int(i), t, y, g)
            for i, t, y, g in zip(self.item_ids, self.titles, self.years, self.genres, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.item_ids)

    def item(self, row: int) -> Item:
        return self._items[row]  # frozen: shared by every answer

    def rows(
        self, item_ids: Iterable[int], loc: Loc, *, field: Loc = (), unique: bool = False
    ) -> np.ndarray:
        """Data set item ids → catalog rows (N,) int64.

        Errors are located at ``(*loc, index, *field)``, e.g. ``loc=("ratings",)`` and
        ``field=("item_id",)`` give ``("ratings", 3, "item_id")``: unknown ids raise at
        the first one's index with all of them as the value; with ``unique``, so does
        the first repeated id.
        """
        ids = np.asarray(list(item_ids), dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
        known = self._sorted_ids[pos] == ids if len(self._sorted_ids) else ids != ids
        if not known.all():
            unknown = sorted({int(i) for i in ids[~known]})
            first = int(np.flatnonzero(~known)[0])
            raise InvalidInput((*loc, first, *field), unknown, f"unknown item id(s) {unknown}")
        if unique:
            _, first_seen = np.unique(ids, return_index=True)
            repeated = np.setdiff1d(np.arange(len(ids)), first_seen)
            if len(repeated):
                i = int(repeated[0])
                raise InvalidInput((*loc, i, *field), int(ids[i]), "duplicate item id")
        return self._sorted_rows[pos]  # type: ignore[no-any-return]

    def rated(self, ratings: Ratings, scale: tuple[float, float]) -> tuple[np.ndarray, list[float]]:
        """Check a person's ``(item_id, rating)`` pairs → catalog rows (N,) and the ratings.

        Item ids must be known and distinct, ratings finite and within ``scale``; the first
        problem raises at its location, e.g. ``("ratings", 2, "rating")``.
        """
        rows = self.rows([r[0] for r in ratings], ("ratings",), field=("item_id",))
        low, high = scale
        seen: set[int] = set()
        for i, (item_id, rating) in enumerate(ratings):
            if int(item_id) in seen:
                raise InvalidInput(("ratings", i, "item_id"), item_id, "duplicate item id")
            seen.add(int(item_id))
            if not math.isfinite(rating):
                raise InvalidInput(("ratings", i, "rating"), rating, "must be a finite number")
            if not low <= rating <= high:
                reason = f"outside the rating scale [{low:g}, {high:g}]"
                raise InvalidInput(("ratings", i, "rating"), rating, reason)
        return rows, [float(r[1]) for r in ratings]

    def rated_many(
        self, people: Sequence[Ratings], scale: tuple[float, float]
    ) -> list[tuple[list[int], list[float]]] | None:
        """``rated`` for many people's ratings in one lookup: each one's catalog rows and
        ratings when every rating of every person is valid, else ``None`` (then ``rated``
        person by person names the first problem)."""
        sizes = [len(ratings) for ratings in people]
        try:  # (what rated refuses or fails on, it meets again: None)
            ids = np.array([r[0] for ratings in people for r in ratings], dtype=np.int64)
            given = [r[1] for ratings in people for r in ratings]
            if not all(map(math.isfinite, given)):
                return None
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if not len(self._sorted_ids):
            return None if len(ids) else [([], []) for _ in people]
        values = [float(v) for v in given]
        pos = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
        low, high = scale
        checked = np.array(values, dtype=np.float64)
        valid = (self._sorted_ids[pos] == ids) & (low <= checked) & (checked <= high)
        person = np.repeat(np.arange(len(people)), sizes)
        order = np.lexsort((ids, person))  # a person's ids side by side: repeats neighbour
        repeated = (np.diff(person[order]) == 0) & (np.diff(ids[order]) == 0)
        if not valid.all() or repeated.any():
            return None
        rows = self._sorted_rows[pos].tolist()
        out, lo = [], 0
        for n in sizes:
            out.append((rows[lo : lo + n], values[lo : lo + n]))
            lo += n
        return out

    def find(self, text: str, loc: Loc) -> int:
        """The one row whose title ``text`` names (``"Star Wars"``, ``"the godfather"``,
        ``"Shaft (2000)"``, a typo), by :meth:`TitleIndex.best`; no match or several equally
        good ones raise ``InvalidInput`` at ``loc``, naming up to five candidates."""
        rows = self._titles.best(text)
        if len(rows) == 1:
            return int(rows[0])
        if not len(rows):
            raise InvalidInput(loc, text, "no movie title matches it")
        named = "; ".join(f"{self.titles[r]} (id {self.item_ids[r]})" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise InvalidInput(loc, text, f"{len(rows)} titles match it equally: {named}{more}")

    def search(
        self,
        text: str | None = None,
        genre: str | None = None,
        *,
        limit: int = 20,
        offset: int = 0,
    ) -> ItemPage:
        """Items whose title matches ``text`` and whose genres include ``genre``
        (case-insensitive); the page of ``limit`` from ``offset``.

        With ``text`` the best matches come first (:class:`melu.serving.search.TitleIndex`:
        articles, accents, punctuation and case ignored, typos tolerated); without it, in
        item id order.
        """
        keep = np.ones(len(self), dtype=bool)
        if genre:
            wanted = genre.casefold()
            keep &= np.array(
                [any(g.casefold() == wanted for g in gs) for gs in self.genres], dtype=bool
            )
        if text and text.strip():
            rows = self._titles.match(text, keep)
        else:
            rows = np.flatnonzero(keep)
            rows = rows[np.argsort(self.item_ids[rows], kind="stable")]
        page: Sequence[int] = rows[offset : offset + limit].tolist()
        return ItemPage(len(rows), limit, offset, [self.item(r) for r in page])
