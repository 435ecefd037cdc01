"""How two finished ``melu cv`` studies' models differ on the same test users (RESULTS.md).

Each study keeps every fold's per-user top-N figures (``folds/*/result/result.json``); the
two studies must share their users and folds (the same data set, ``--data-seed`` and
``--folds``), as a rerun with one setting changed does. Prints, per support size, the mean
per-user difference A − B of the model's NDCG@10 and Recall@10 in the user-cold setting
(all candidates), with a 95% bootstrap CI over the users (2,000 resamples, seed 0).

A study may also be a CSV that ``--save`` wrote (n, metric, user_id, value: the model's
figures only, small enough to commit beside a report, e.g.
``results/cv-ml-1m/model_per_user.csv``), so a later study can be paired with this one
without its fold folders.

    python studies/paired_studies.py runs/cv-ml-100k-new runs/cv-ml-100k-old
    python studies/paired_studies.py runs/cv-ml-1m --save results/cv-ml-1m/model_per_user.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

METRICS = ("ndcg@10", "recall@10")


def per_user(study: Path) -> dict[tuple[int, str, int], float]:
    """(support size, metric, user id) → the model's value, over every fold of ``study`` (a
    ``melu cv --out`` folder, or a CSV that ``save`` wrote)."""
    out: dict[tuple[int, str, int], float] = {}
    if study.suffix == ".csv":
        with study.open(newline="") as f:
            for row in csv.DictReader(f):
                out[int(row["n"]), row["metric"], int(row["user_id"])] = float(row["value"])
        return out
    files = sorted(study.glob("folds/*/result/result.json"))
    if not files:
        raise SystemExit(f"{study}: no folds/*/result/result.json (is it a melu cv --out?)")
    for path in files:
        settings = json.loads(path.read_text())["topn"]["scenarios"]["user_cold"]["all"]
        for setting in settings:
            users = setting["per_user"]
            for metric in METRICS:
                values = users["methods"]["model"][metric]
                for user, value in zip(users["user_ids"], values, strict=True):
                    out[setting["n"], metric, int(user)] = value
    return out


def save(values: dict[tuple[int, str, int], float], path: Path) -> None:
    """``per_user``'s values as a CSV (n, metric, user_id, value), sorted."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["n", "metric", "user_id", "value"])
        for (n, metric, user), value in sorted(values.items()):
            writer.writerow([n, metric, user, f"{value:.6g}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a melu cv --out folder (or a --save CSV)")
    parser.add_argument("b", type=Path, nargs="?", help="the one to compare it with")
    parser.add_argument("--save", type=Path, help="write A's per-user figures to this CSV")
    args = parser.parse_args()
    a = per_user(args.a)
    if args.save is not None:
        save(a, args.save)
        print(f"wrote {len(a)} per-user figures to {args.save}")
    if args.b is None:
        return
    b = per_user(args.b)
    rng = np.random.default_rng(0)
    sizes = sorted({k[0] for k in a})
    for metric in METRICS:
        cells = []
        for n in sizes:
            keys = [k for k in a if k[0] == n and k[1] == metric and k in b]
            d = np.array([a[k] - b[k] for k in keys], dtype=float)
            d = d[~np.isnan(d)]
            if not len(d):
                continue
            boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
            low, high = np.percentile(boot, [2.5, 97.5])
            cells.append(f"n={n}: {d.mean():+.4f} [{low:+.4f}, {high:+.4f}] ({len(d)} users)")
        print(f"{metric} A − B: " + " | ".join(cells))


if __name__ == "__main__":
    main()
