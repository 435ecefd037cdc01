"""Catalog lookups, rating checks and search on a tiny frame; error locations as tuples."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from melu.errors import InvalidInput, format_loc
from melu.serving import Catalog, Item, ItemPage

FRAME = pd.DataFrame(
    {
        "item_id": [30, 10, 20, 40],
        "title": ["Star Wars (1977)", "Heat (1995)", "Lone Star (1996)", "Casablanca (1942)"],
        "year": [1977, 1995, 1996, None],
        "genres": [["Sci-Fi"], ["Crime", "Thriller"], ["Drama"], ["Drama", "Film-Noir"]],
        "n_ratings": [500, 50, 5, 0],
    }
)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(FRAME)


def test_rows_and_items(catalog: Catalog) -> None:
    assert len(catalog) == 4
    assert catalog.rows([10, 40, 30], ("item_ids",)).tolist() == [1, 3, 0]
    assert catalog.item(3) == Item(40, "Casablanca (1942)", None, ("Drama", "Film-Noir"))


@pytest.mark.parametrize(
    ("ids", "unique", "loc", "value"),
    [
        ([10, 99, 7], False, ("candidate_ids", 1), [7, 99]),
        ([10, 20, 10], True, ("candidate_ids", 2), 10),
    ],
)
def test_rows_locate_bad_ids(
    catalog: Catalog, ids: list[int], unique: bool, loc: tuple[str | int, ...], value: object
) -> None:
    with pytest.raises(InvalidInput) as err:
        catalog.rows(ids, ("candidate_ids",), unique=unique)
    assert err.value.loc == loc and err.value.value == value
    assert str(err.value).startswith(format_loc(loc) + ":")


@pytest.mark.parametrize(
    ("ratings", "loc", "word"),
    [
        ([(10, 4.0), (5, 3.0)], ("ratings", 1, "item_id"), "unknown"),
        ([(10, 4.0), (10, 3.0)], ("ratings", 1, "item_id"), "duplicate"),
        ([(10, math.nan)], ("ratings", 0, "rating"), "finite"),
        ([(10, 4.0), (20, 5.5)], ("ratings", 1, "rating"), "scale"),
    ],
)
def test_rated_locates_the_first_problem(
    catalog: Catalog, ratings: list[tuple[int, float]], loc: tuple[str | int, ...], word: str
) -> None:
    with pytest.raises(InvalidInput, match=word) as err:
        catalog.rated(ratings, (1.0, 5.0))
    assert err.value.loc == loc
    rows, values = catalog.rated([(20, 5.0), (30, 1)], (1.0, 5.0))
    assert rows.tolist() == [2, 0] and values == [5.0, 1.0]


def test_search_and_browse_in_id_order(catalog: Catalog) -> None:
    page = catalog.search("STAR", limit=10)
    assert page == ItemPage(2, 10, 0, [catalog.item(2), catalog.item(0)])  # ids 20, 30
    assert [i.item_id for i in catalog.search(genre="drama").items] == [20, 40]
    assert [i.item_id for i in catalog.search(limit=2, offset=1).items] == [20, 30]
    assert catalog.search("nothing like this").total == 0


def test_format_loc() -> None:
    assert format_loc(("ratings", 2, "rating")) == "ratings[2].rating"
    assert format_loc(("k",)) == "k"
    assert InvalidInput(("item_ids", 0), 5, "bad").field == "item_ids[0]"
