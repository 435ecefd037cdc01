"""What a person sees: the top 10 for three hand-made new users and one with no ratings.

Prints each user's ratings, then the ten movies the served ``Recommender.recommend`` returns
(title, genres, predicted rating, and the rated movies named as the reason), and how much
the lists overlap: with the no-ratings list and with each other. Not a test; run it on a
bundle before and after a model change and paste the output into RESULTS.md.

    python benchmarks/what_a_person_sees.py --model runs/quickstart

The users are ML-100K ids (the three of issue 15: a Star Wars fan, a horror fan, a
romantic-comedy fan, 3 ratings each; and a sci-fi fan with 5, whom the head's
personalisation rule reaches); ``--dataset`` picks the matching titles on other MovieLens sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from melu.serving import Recommender

PEOPLE: dict[str, list[tuple[str, float]]] = {
    "no ratings": [],
    "Star Wars fan": [
        ("Star Wars (1977)", 5),
        ("Empire Strikes Back, The (1980)", 5),
        ("Return of the Jedi (1983)", 4),
    ],
    "horror fan": [
        ("Shining, The (1980)", 5),
        ("Nightmare on Elm Street, A (1984)", 5),
        ("Carrie (1976)", 4),
    ],
    "romantic-comedy fan": [
        ("Sleepless in Seattle (1993)", 5),
        ("When Harry Met Sally... (1989)", 5),
        ("Pretty Woman (1990)", 4),
    ],
    # five ratings: the head's personalisation rule (from 4 ratings) applies
    "sci-fi fan, 5 ratings": [
        ("Star Wars (1977)", 5),
        ("Empire Strikes Back, The (1980)", 5),
        ("Return of the Jedi (1983)", 4),
        ("Alien (1979)", 5),
        ("Blade Runner (1982)", 4),
    ],
}


def ratings_of(rec: Recommender, titles: list[tuple[str, float]]) -> list[tuple[int, float]]:
    """Exact catalog titles → (item id, rating)."""
    by_title = {rec.catalog.item(r).title: rec.catalog.item(r).item_id for r in range(rec.n_items)}
    return [(by_title[t], r) for t, r in titles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="bundle or run folder")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rec = Recommender.from_bundle(args.model, onboarding=False, threads=1)
    lists: dict[str, list[int]] = {}
    for name, titles in PEOPLE.items():
        result = rec.recommend(None, ratings_of(rec, titles), k=args.k)
        lists[name] = [item.item_id for item in result.items]
        rated = ", ".join(f"{t} {r:g}★" for t, r in titles) or "nothing"
        print(f"\n### {name} (rated {rated})\n")
        print("| # | movie | genres | predicted | because you rated |")
        print("|---|---|---|---|---|")
        for i, item in enumerate(result.items, 1):
            why = "; ".join(f"{b.title} {b.rating:g}★" for b in item.because)
            genres = ", ".join(item.genres)
            print(f"| {i} | {item.title} | {genres} | {item.score:.2f} | {why} |")
    base = set(lists["no ratings"])
    print("\n| user | shared with the no-ratings list |")
    print("|---|---|")
    for name, items in lists.items():
        if name != "no ratings":
            print(f"| {name} | {len(base & set(items))} of {args.k} |")
    names = [n for n in lists if n != "no ratings"]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for a, b in pairs:
        print(f"| {a} ∩ {b} | {len(set(lists[a]) & set(lists[b]))} of {args.k} |")


if __name__ == "__main__":
    main()
