"""Catalog lookups, rating checks and search on a tiny frame; error locations as tuples."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from melu.errors import InvalidInput, format_loc
from melu.serving import Catalog, Item, ItemPage
from melu.serving.search import normalise, title_keys

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


def test_rated_many_is_rated_person_by_person_or_none(catalog: Catalog) -> None:
    """Many people's ratings in one lookup: each one's ``rated`` when all are valid (the
    same id may appear for two people); ``None`` when anyone's are not."""
    people = [[(30, 5), (10, 1.5)], [], [(30, 4.0)], [(40, 1), (20, 2), (10, 3)]]
    got = catalog.rated_many(people, (1.0, 5.0))
    assert got is not None
    for ratings, (rows, values) in zip(people, got, strict=True):
        want_rows, want_values = catalog.rated(ratings, (1.0, 5.0))
        assert rows == want_rows.tolist() and values == want_values
        assert all(type(v) is float for v in values)
    assert catalog.rated_many([], (1.0, 5.0)) == []
    for bad in ([(99, 3)], [(30, 3), (30, 4)], [(30, 6)], [(30, math.nan)], [(30, "5")]):
        assert catalog.rated_many([people[0], bad], (1.0, 5.0)) is None


def test_search_best_first_and_browse_in_id_order(catalog: Catalog) -> None:
    page = catalog.search("STAR", limit=10)  # a title starting with it, then a word of one
    assert page == ItemPage(2, 10, 0, [catalog.item(0), catalog.item(2)])  # ids 30, 20
    assert [i.item_id for i in catalog.search(genre="drama").items] == [20, 40]
    assert [i.item_id for i in catalog.search(limit=2, offset=1).items] == [20, 30]
    assert catalog.search("nothing like this").total == 0


def test_format_loc() -> None:
    assert format_loc(("ratings", 2, "rating")) == "ratings[2].rating"
    assert format_loc(("k",)) == "k"
    assert InvalidInput(("item_ids", 0), 5, "bad").field == "item_ids[0]"


# ML-1M's own spelling of these titles (movies.dat), with its rating counts' order of size
ML1M = pd.DataFrame(
    {
        "item_id": [260, 1196, 318, 858, 1221, 2571, 745, 1, 3114, 2064, 29, 6],
        "title": [
            "Star Wars: Episode IV - A New Hope (1977)",
            "Star Wars: Episode V - The Empire Strikes Back (1980)",
            "Shawshank Redemption, The (1994)",
            "Godfather, The (1972)",
            "Godfather: Part II, The (1974)",
            "Matrix, The (1999)",
            "Close Shave, A (1995)",
            "Toy Story (1995)",
            "Toy Story 2 (1999)",
            "Roger & Me (1989)",
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "Heat (1995)",
        ],
        "year": [1977, 1980, 1994, 1972, 1974, 1999, 1995, 1995, 1999, 1989, 1995, 1995],
        "genres": [["Sci-Fi"]] * 12,
        "n_ratings": [2991, 2990, 2227, 2223, 1582, 2590, 657, 2077, 1585, 300, 400, 1000],
    }
)


@pytest.fixture
def ml1m() -> Catalog:
    return Catalog(ML1M)


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("the godfather", 858),  # stored "Godfather, The"
        ("Godfather", 858),
        ("GODFATHER, THE", 858),
        ("starwars", 260),  # spaces ignored; the most rated of the matches first
        ("star-wars", 260),
        ("matrix", 2571),
        ("the matrix", 2571),
        ("shawshenk", 318),  # a typo
        ("shawshank redemptoin", 318),
        ("a close shave", 745),
        ("cite des enfants", 29),  # accents, and the alternative title in parentheses
        ("CITÉ DES ENFANTS", 29),
        ("roger and me", 2064),  # "&"
        ("heat 1995", 6),  # the year
    ],
)
def test_search_forgives_articles_accents_punctuation_case_and_typos(
    ml1m: Catalog, query: str, first: int
) -> None:
    page = ml1m.search(query, limit=5)
    assert page.items and page.items[0].item_id == first, (query, page.items)


def test_search_ranks_exact_above_typo_matches_and_keeps_the_genre_filter(ml1m: Catalog) -> None:
    assert [i.item_id for i in ml1m.search("godfather").items] == [858, 1221]
    assert [i.item_id for i in ml1m.search("star wars").items] == [260, 1196]
    assert ml1m.search("toy", limit=1).total == 2
    assert 1196 in [i.item_id for i in ml1m.search("the").items]  # an article alone is a word
    assert ml1m.search("xyzzy").total == 0
    assert ml1m.search("hear").total == 0  # 4 letters: exact only, no "Heat" for a typo
    assert ml1m.search("   ").total == len(ml1m)  # blank is browsing
    assert ml1m.search("star", genre="drama").total == 0


def test_normalised_keys() -> None:
    assert normalise("Godfather: Part II, The") == "godfather part ii"
    assert normalise("Schindler's List") == "schindlers list"
    assert normalise("The") == "the"
    assert title_keys("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == [
        "city of lost children",
        "city of lost children 1995",
        "cite des enfants perdus",
    ]


def test_find_one_title_or_say_why_not(ml1m: Catalog) -> None:
    assert ml1m.item_ids[ml1m.find("the godfather", ("--rate",))] == 858  # equal beats prefix
    assert ml1m.item_ids[ml1m.find("Heat (1995)", ("--rate",))] == 6
    assert ml1m.item_ids[ml1m.find("shawshenk", ("--rate",))] == 318
    with pytest.raises(InvalidInput, match="no movie title") as err:
        ml1m.find("xyzzy", ("--rate", 0))
    assert err.value.loc == ("--rate", 0)
    with pytest.raises(InvalidInput, match=r"2 titles match.*\(id 260\).*\(id 1196\)"):
        ml1m.find("star wars", ("--rate",))


def test_search_real_ml1m_titles() -> None:
    """On the whole ML-1M catalog (3,883 titles): the cases the issue names."""
    folder = os.environ.get("MELU_DATA_DIR")
    movies = Path(folder or "", "ml-1m", "movies.dat")
    if not folder or not movies.is_file():
        pytest.skip("ML-1M not in $MELU_DATA_DIR")
    rows = [line.split("::") for line in movies.read_text(encoding="latin-1").splitlines()]
    frame = pd.DataFrame(
        {
            "item_id": [int(r[0]) for r in rows],
            "title": [r[1] for r in rows],
            "year": [None] * len(rows),
            "genres": [[]] * len(rows),
            "n_ratings": [0] * len(rows),
        }
    )
    catalog = Catalog(frame)
    first = {q: catalog.search(q, limit=3).items[0].title for q in
             ("the godfather", "starwars", "matrix", "shawshenk")}  # fmt: skip
    assert first == {
        "the godfather": "Godfather, The (1972)",
        "starwars": "Star Wars: Episode IV - A New Hope (1977)",
        "matrix": "Matrix, The (1999)",
        "shawshenk": "Shawshank Redemption, The (1994)",
    }
