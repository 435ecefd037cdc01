"""What the head's personalisation rule costs a request: ``Recommender.recommend`` with the
rule on (the bundle's ``rank.shared_cut``, or ``--keep`` from ``rank_shared_from`` ratings
for a bundle trained without it) against the same bundle with it 0 (off),
interleaved request by request in one run, 1 torch thread, ML-100K-style requests of 5
ratings (``benchmarks/service.py``'s users). Prints p50/p99 of each and the ratio.

    python benchmarks/rank_rule.py --model runs/quickstart/model [--requests 400]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu.bundle import load_bundle
from melu.model.personal import shared_cut
from melu.serving import Recommender


def make_requests(recommender: Recommender, count: int) -> list[dict[str, Any]]:
    """benchmarks/service.py's request bodies (loaded by path: ``service`` is the app)."""
    spec = importlib.util.spec_from_file_location(
        "service_bench", Path(__file__).with_name("service.py")
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.make_requests(recommender, count)  # type: ignore[no-any-return]


def timed(recommender: Recommender, body: dict[str, Any]) -> float:
    ratings = [(r["item_id"], float(r["rating"])) for r in body["ratings"]]
    start = time.perf_counter()
    recommender.recommend(body["user"], ratings, body["k"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a bundle (runs/NAME/model)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--keep", type=int, default=3,
        help="the rule's keep for a bundle trained without it (its own otherwise)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.model)
    if "rank.shared_cut" not in bundle.params:
        raise SystemExit(f"{args.model}: no ranking head with the personalisation rule")
    cut = bundle.params["rank.shared_cut"]
    if not bool((cut > 0).any()):  # a bundle trained without the rule: switch it on
        cut = shared_cut(args.keep, bundle.config.train.rank_shared_from)
    on_params = {**bundle.params, "rank.shared_cut": cut}
    off_params = {**bundle.params, "rank.shared_cut": torch.zeros_like(cut)}
    on = Recommender(dataclasses.replace(bundle, params=on_params), onboarding=False, threads=1)
    off = Recommender(dataclasses.replace(bundle, params=off_params), onboarding=False, threads=1)
    bodies = make_requests(on, args.requests)
    for body in bodies[:50]:  # warm-up: the first calls, and each one's no-ratings list
        timed(on, body), timed(off, body)
    times: dict[str, list[float]] = {"rule on": [], "rule off": []}
    for body in bodies:
        times["rule on"].append(timed(on, body))
        times["rule off"].append(timed(off, body))
    print(f"rank.shared_cut {cut.tolist()}, {args.requests} requests of 5 ratings, 1 thread:")
    for name, seconds in times.items():
        ms = np.asarray(seconds) * 1e3
        print(
            f"  {name:8s} p50 {np.percentile(ms, 50):5.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms"
        )
    ratio = np.percentile(times["rule on"], 50) / np.percentile(times["rule off"], 50)
    print(f"  on / off at p50: x{ratio:.2f}")


if __name__ == "__main__":
    main()
