"""Two source trees, A/B on the same machine: one meta-training epoch and in-process p50.

For comparing a change against the code before it (e.g. a ``git worktree`` of the old
commit) on a shared, noisy machine. Each round runs every tree once, alternating, in a fresh
subprocess with ``PYTHONPATH=<tree>`` and 1 torch thread; each figure is that process's
best of ``--repeats``, in CPU time (``time.process_time``: what the process itself spent,
much less sensitive to other jobs than wall time) and wall time. Only APIs that both the
pre- and post-consolidation layouts have are used (``MetaTrainer(config, prepared, device)``,
``.meta_batches``, ``.step``; ``Recommender.from_bundle(...).recommend``).

    python benchmarks/ab_trees.py --trees /path/old,/path/new --model runs/ml100k/model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
kind, model, data_dir, cache, repeats = sys.argv[1:6]
repeats = int(repeats)

def best(fn):
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)

if kind == "epoch":
    from melu.config import Config, DataConfig
    from melu.prepare import prepare
    try:
        from melu.training.train import MetaTrainer
    except ImportError:
        from melu.train import MetaTrainer
    prepared = prepare(DataConfig(dataset="ml-100k"), Path(data_dir), cache)
    trainer = MetaTrainer(Config(), prepared, torch.device("cpu"))
    batches = trainer.meta_batches(1)
    cpu, wall = best(lambda: [trainer.step(i) for i in batches])
    print(json.dumps({"epoch_cpu_s": cpu, "epoch_wall_s": wall}))
else:
    try:
        from melu.serving import Recommender
    except ImportError:
        from melu.recommend import Recommender
    rec = Recommender.from_bundle(model, "cpu", onboarding=False, threads=1)
    ids = np.asarray(rec.catalog.item_ids if hasattr(rec.catalog, "item_ids")
                     else rec.catalog["item_id"].to_numpy())
    rng = np.random.default_rng(0)
    calls = [({"gender": "MF"[i % 2], "age": int(rng.integers(15, 65)), "occupation": "other"},
              [(int(j), float(rng.integers(1, 6))) for j in rng.choice(ids[:500], 5, replace=False)])
             for i in range(300)]
    def one_pass():
        times = []
        for user, ratings in calls:
            c = time.process_time()
            rec.recommend(user, ratings, k=10)
            times.append(time.process_time() - c)
        return times
    one_pass()
    cpu_p50 = min(float(np.median(one_pass())) for _ in range(repeats))
    walls = []
    for user, ratings in calls:
        w = time.perf_counter()
        rec.recommend(user, ratings, k=10)
        walls.append(time.perf_counter() - w)
    print(json.dumps({"p50_cpu_ms": cpu_p50 * 1e3, "p50_wall_ms": float(np.median(walls)) * 1e3}))
"""


def run(tree: str, kind: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1", "MELU_TORCH_THREADS": "1"}
    cache = str(Path(args.cache_root) / Path(tree).name)
    argv = [kind, str(args.model), args.data_dir, cache, str(args.repeats)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"{tree} {kind} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="comma-separated source trees (A,B)")
    parser.add_argument("--model", type=Path, required=True, help="a bundle both trees load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    parser.add_argument("--cache-root", default="/tmp/melu-ab-cache")
    args = parser.parse_args()
    trees = args.trees.split(",")
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]  # alternate who goes first
        for tree in order:
            figures = {**run(tree, "epoch", args), **run(tree, "serve", args)}
            results[tree].append(figures)
            print(f"round {r + 1} {tree}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    base = trees[0]
    for key in results[base][0]:
        line = []
        for tree in trees:
            values = [f[key] for f in results[tree]]
            line.append(f"{Path(tree).name} median {statistics.median(values):.3f}")
        ratio = statistics.median(f[key] for f in results[trees[-1]]) / statistics.median(
            f[key] for f in results[base]
        )
        print(
            f"{key}: "
            + " | ".join(line)
            + f" | {Path(trees[-1]).name}/{Path(base).name} {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
