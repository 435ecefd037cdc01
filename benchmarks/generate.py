"""Write a synthetic MovieLens data set in the ml-25m layout (``ratings.csv`` + ``movies.csv``).

Realistic skew, so task building sees the shapes of the real thing: user activity is
20 + log-normal (a few very heavy users, most with a few dozen ratings), item popularity is
Zipf-like (a long tail), ratings are half stars with ML-25M's distribution, and each user
rates over a session that starts somewhere in 1996..2019. Items carry a year in the title
(later ids are newer, as in MovieLens) and 1..3 genres.

Usage::

    python benchmarks/generate.py --ratings 10000000 --out /tmp/melu-gen/ml-25m

Generated data goes under /tmp, never the repository. Vectorised numpy, written in chunks
of users with pyarrow's CSV writer, so 25M ratings take well under a minute.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary")
GENRES += ("Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance")
GENRES += ("Sci-Fi", "Thriller", "War", "Western")
STARS = np.arange(1, 11) / 2  # 0.5 .. 5.0
STAR_P = np.array([1.6, 3.2, 2.0, 6.6, 5.0, 19.7, 13.0, 26.6, 8.5, 14.4])  # ML-25M, %
T0, T1 = 820_454_400, 1_563_000_000  # 1996-01-01 .. 2019-07


def sizes(n_ratings: int) -> tuple[int, int]:
    """(users, items) of a data set of ``n_ratings`` (ML-25M: 162k users, 62k items)."""
    users = max(50, n_ratings // 155)
    items = int(min(62_000, max(1_000, 9 * np.sqrt(n_ratings))))
    return users, items


def write_movies(path: Path, n_items: int, rng: np.random.Generator) -> None:
    """``movies.csv``: id, "Title N (year)", genres; ids grow with the year."""
    years = np.sort(rng.integers(1920, 2020, n_items))
    ids = np.arange(1, n_items + 1)
    k = rng.integers(1, 4, n_items)
    picks = rng.integers(0, len(GENRES), (n_items, 3))
    genres = [
        "|".join(sorted({GENRES[g] for g in row[:n]})) for row, n in zip(picks, k, strict=True)
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("movieId,title,genres\n")
        f.writelines(
            f"{i},Movie {i} ({y}),{g}\n" for i, y, g in zip(ids, years, genres, strict=True)
        )


def user_counts(n_ratings: int, n_users: int, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """(U,) ratings per user: 20 + log-normal, rescaled to sum to about ``n_ratings``."""
    extra = rng.lognormal(mean=3.5, sigma=1.3, size=n_users)
    cap = n_items // 2
    for _ in range(5):  # rescale after capping the heaviest users
        extra *= max(0, n_ratings - 20 * n_users) / np.minimum(extra, cap).sum()
    return np.minimum(20 + np.floor(extra).astype(np.int64), cap)


def draws_for(counts: np.ndarray, item_p: np.ndarray) -> np.ndarray:
    """(U,) draws with replacement whose expected number of distinct items is ``counts``.

    E[distinct after c draws] = sum_i 1 - (1 - p_i)^c, inverted on a log grid of c.
    """
    grid = np.geomspace(1, 200 * len(item_p), 400)
    expected = np.array([np.sum(-np.expm1(c * np.log1p(-item_p))) for c in grid])
    return np.ceil(np.interp(counts, expected, grid)).astype(np.int64)


def user_chunk(
    counts: np.ndarray, first_user: int, item_p: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Ratings of users ``first_user ..`` with ``counts`` each; unique (user, item) pairs."""
    n = int(counts.sum())
    users = np.repeat(np.arange(first_user, first_user + len(counts), dtype=np.int64), counts)
    items = rng.choice(len(item_p), size=n, p=item_p).astype(np.int64) + 1
    key = np.unique(users * (len(item_p) + 1) + items)  # dedupe: a few pairs collide
    users, items = key // (len(item_p) + 1), key % (len(item_p) + 1)
    start = rng.integers(T0, T1, len(counts))
    span = rng.exponential(3e7, len(counts)).astype(np.int64)
    u = users - first_user
    stamps = start[u] + (rng.random(len(users)) * span[u]).astype(np.int64)
    stamps = np.minimum(stamps, T1 + 10_000_000)
    ratings = rng.choice(STARS, size=len(users), p=STAR_P / STAR_P.sum())
    return pa.table(
        {
            "userId": users.astype(np.int32),
            "movieId": items.astype(np.int32),
            "rating": ratings.astype(np.float32),
            "timestamp": stamps,
        }
    )


def generate(n_ratings: int, out: Path, seed: int = 0, chunk_users: int = 20_000) -> int:
    """Write ``out/ratings.csv`` and ``out/movies.csv``; return the number of ratings."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_users, n_items = sizes(n_ratings)
    write_movies(out / "movies.csv", n_items, rng)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p = rng.permutation(pop)  # popularity independent of id (old and new items)
    item_p /= item_p.sum()
    counts = draws_for(user_counts(n_ratings, n_users, n_items, rng), item_p)
    written = 0
    options = pcsv.WriteOptions(include_header=False)
    with open(out / "ratings.csv", "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        for lo in range(0, n_users, chunk_users):
            table = user_chunk(counts[lo : lo + chunk_users], lo + 1, item_p, rng)
            pcsv.write_csv(table, f, options)
            written += table.num_rows
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/melu-gen/ml-25m"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    n = generate(args.ratings, args.out, args.seed)
    print(f"wrote {n:,} ratings to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
