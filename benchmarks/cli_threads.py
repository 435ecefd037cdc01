"""Wall time of ``melu evaluate`` and ``melu recommend --batch`` by torch thread setting.

Each command runs as a fresh process (import, load, work, exit: what a user waits for)
with: the new default (no flag: ``--threads 1``), ``OMP_NUM_THREADS=1`` in the
environment (the workaround the issue measured), ``--threads 0`` (torch's default: one
thread per core, the old behaviour) and ``--threads N`` for each ``--also N``. Rounds
alternate the order of the settings; each figure is the median over ``--rounds``. The
ratio column is each setting's median over the best one (the default must be <= 1.2).

    MELU_DATA_DIR=../shared/data python benchmarks/cli_threads.py --model runs/ml100k \\
        --cache-dir .melu-cache --rounds 3 [--users 2000] [--also 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_users(model: Path, path: Path, n: int, seed: int = 0) -> None:
    """``n`` request bodies, each a different user rating 5 random catalog items."""
    bundle = model / "model" if (model / "model").is_dir() else model
    ids = pd.read_parquet(bundle / "catalog.parquet")["item_id"].to_numpy()
    rng = np.random.default_rng(seed)
    with path.open("w") as file:
        for _ in range(n):
            items = rng.choice(ids, size=5, replace=False)
            ratings = [{"item_id": int(i), "rating": int(rng.integers(1, 6))} for i in items]
            body = {"user": {"gender": str(rng.choice(["F", "M"]))}, "ratings": ratings, "k": 10}
            file.write(json.dumps(body) + "\n")


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "melu", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def settings(also: list[int]) -> dict[str, tuple[list[str], dict[str, str]]]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = {
        "default (--threads 1)": ([], base),
        "OMP_NUM_THREADS=1": ([], {**base, "OMP_NUM_THREADS": "1"}),
        "--threads 0 (torch's default)": (["--threads", "0"], base),
    }
    for n in also:
        out[f"--threads {n}"] = (["--threads", str(n)], base)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".melu-cache"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--also", type=int, action="append", default=[])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="melu-threads-"))
    users = tmp / "users.jsonl"
    write_users(args.model, users, args.users)
    commands = {
        "evaluate": ["evaluate", "--model", str(args.model), "--cache-dir", str(args.cache_dir),
                     "--out", str(tmp / "eval"), "--no-progress"],
        "recommend --batch": ["recommend", "--model", str(args.model), "--batch", str(users),
                              "--out", str(tmp / "recs.jsonl"), "--no-progress"],
    }  # fmt: skip
    choices = settings(args.also)
    print(f"{os.cpu_count()} cores; {args.rounds} rounds; {args.users} users for --batch")
    for name, command in commands.items():
        times: dict[str, list[float]] = {label: [] for label in choices}
        for round_ in range(args.rounds):
            order = list(choices) if round_ % 2 == 0 else list(reversed(choices))
            for label in order:
                extra, env = choices[label]
                times[label].append(timed(command + extra, env))
        medians = {label: statistics.median(t) for label, t in times.items()}
        best = min(medians.values())
        print(f"\nmelu {name}")
        for label, median in medians.items():
            rate = f"  {args.users / median:6.0f} users/s" if name.startswith("recommend") else ""
            print(f"  {label:<32} {median:7.2f} s{rate}  ×{median / best:.2f} of the best")


if __name__ == "__main__":
    main()
