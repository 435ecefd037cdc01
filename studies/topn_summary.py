"""The compact top-N tables of RESULTS.md from a ``melu cv`` report.

    python studies/topn_summary.py results/cv-ml-100k/report.json [--scenario user_cold]

Prints, for the scenario's all-candidates setting, Recall@10 and NDCG@10 of every method
per support size, melu − each baseline with its paired 95% CI, and the top-10 list
statistics at n = 5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {
    "model": "melu", "popularity": "popularity", "item_knn": "item-kNN", "user_knn": "user-kNN",
    "ease": "EASE^R",
    "ease_liked": "EASE^R, liked target",
    "rp3beta": "RP³β",
    "implicit_als": "implicit ALS", "baseline_predictor": "μ + b_i + b_u",
    "mf_fold_in": "MF + fold-in",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--scenario", default="user_cold")
    args = parser.parse_args()
    rows = json.loads(args.report.read_text())["topn"]["scenarios"][args.scenario]["all"]
    sizes = [r["n"] for r in rows]
    head = "| | " + " | ".join(f"n = {n}" for n in sizes) + " |"
    for metric in ("recall@10", "ndcg@10"):
        print(f"\n{metric}\n{head}\n|---|" + "---|" * len(sizes))
        for key, name in NAMES.items():
            values = [r["methods"][key][metric] for r in rows]
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        print(f"\nmelu − baseline, {metric}\n{head}\n|---|" + "---|" * len(sizes))
        for key, name in list(NAMES.items())[1:]:
            cells = []
            for r in rows:
                c = r["comparison"][key][metric]
                star = " ★" if r.get("best_baseline") == key else ""
                cells.append(f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]{star}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    five = next(r for r in rows if r["n"] == 5)
    print("\nn = 5 lists: coverage, mean training popularity, overlap with no-ratings, pairwise")
    for key, name in NAMES.items():
        m = five["methods"][key]
        print(
            f"| {name} | {m['coverage']:.1%} | {m['popularity']:.0f} | "
            f"{m['overlap_no_ratings']:.0%} | {m['overlap_pairwise']:.0%} |"
        )


if __name__ == "__main__":
    main()
