"""Time ``melu.prepare.prepare`` on real ml-100k and on generated 1M / 10M / 25M ratings.

Each size runs in its own subprocess (a fresh interpreter, a cold task cache), which
reports its wall time and peak RSS (``ru_maxrss``, including the interpreter and torch).
The baseline, measured in the same subprocess on the same file, is a plain
``pandas.read_csv`` of the ratings: ``x read`` is how many times that I/O floor the whole
preparation (read, clean, split, features, tasks, cache write) takes.

    MELU_DATA_DIR=../shared/data python benchmarks/prepare.py --sizes 1e6,1e7,2.5e7

Generated data lives under ``--gen-dir`` (default /tmp/melu-gen), reused when present.
Targets (2-core machine): 10M in < 30 s and < 3 GB; 25M in < 90 s and < 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from generate import generate

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import pandas as pd
from melu.config import DataConfig
from melu.prepare import prepare
dataset, data_dir, ratings_file = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
if ratings_file.endswith(".csv"):
    pd.read_csv(ratings_file, dtype={"userId": "int32", "movieId": "int32", "rating": "float32"})
else:
    pd.read_csv(ratings_file, sep="\t", header=None)
read_s = time.perf_counter() - start
with tempfile.TemporaryDirectory(dir="/tmp") as cache:
    start = time.perf_counter()
    prepared = prepare(DataConfig(dataset=dataset), data_dir, cache, rebuild=True)
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    prepare(DataConfig(dataset=dataset), data_dir, cache)
    cached_s = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"ratings": prepared.stats["ratings"], "read_s": read_s, "prepare_s": prepare_s,
                  "cached_s": cached_s, "peak_rss": rss,
                  "tasks": sum(s["tasks"] for s in prepared.stats["scenarios"].values())}))
"""


def run_child(dataset: str, data_dir: Path, ratings_file: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, dataset, str(data_dir), str(ratings_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(label: str, r: dict[str, float]) -> None:
    print(
        f"{label:<14}{r['ratings']:>12,}{r['prepare_s']:>10.1f}{r['ratings'] / r['prepare_s']:>14,.0f}"
        f"{r['peak_rss'] / 2**30:>10.2f}{r['read_s']:>9.1f}{r['prepare_s'] / r['read_s']:>8.1f}x"
        f"{r['cached_s']:>9.2f}{r['tasks']:>9,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="generated sizes, comma-separated")
    parser.add_argument("--gen-dir", type=Path, default=Path("/tmp/melu-gen"))
    args = parser.parse_args()
    print(
        f"{'data':<14}{'ratings':>12}{'prep s':>10}{'ratings/s':>14}{'peak GiB':>10}"
        f"{'read s':>9}{'x read':>9}{'cached s':>9}{'tasks':>9}"
    )
    real = os.environ.get("MELU_DATA_DIR")
    if real and (Path(real) / "ml-100k" / "u.data").is_file():
        report("ml-100k", run_child("ml-100k", Path(real), Path(real) / "ml-100k" / "u.data"))
    for size in (int(float(s)) for s in args.sizes.split(",") if s):
        root = args.gen_dir / f"g{size}"
        if not (root / "ml-25m" / "ratings.csv").is_file():
            start = time.perf_counter()
            n = generate(size, root / "ml-25m")
            print(f"  (generated {n:,} ratings in {time.perf_counter() - start:.1f} s)")
        report(f"gen {size / 1e6:g}M", run_child("ml-25m", root, root / "ml-25m" / "ratings.csv"))


if __name__ == "__main__":
    main()
