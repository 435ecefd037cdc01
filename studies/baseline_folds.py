"""A top-N baseline on the test users of every ``melu cv`` fold, without training a model.

``melu cv`` fits every top-N baseline beside the model in each fold. A baseline added after a
long study (ML-1M: over an hour) can be measured on the same test users without training the
model again: the folds are the same random user split (``--folds``, the data seed of the
default config), the support draws the same (``TopNProtocol(seed=0)``, as ``melu cv``), and
each baseline is fit on the fold's training ratings with its settings picked on the fold's
validation users, exactly as in ``melu cv``. The per-user figures of the user-cold setting
(all candidates) go to a CSV in ``paired_studies.py``'s format, to pair with the model's
(``results/cv-*/model_per_user.csv``); per fold and n, each baseline's mean figures and
lists (shared with its no-ratings list, coverage) are printed.

    python studies/baseline_folds.py --dataset ml-1m --baselines user_knn \\
        --out runs/user_knn-ml-1m.csv
    python studies/paired_studies.py results/cv-ml-1m/model_per_user.csv \\
        runs/user_knn-ml-1m.csv      # melu − user-kNN, per user, bootstrap CI
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import torch

from melu.config import Config, DataConfig
from melu.evaluation.cv import fold_config
from melu.evaluation.topn import TopNProtocol
from melu.evaluation.topn_baselines import NAMES, fit_topn_baselines
from melu.evaluation.topn_eval import evaluate_topn
from melu.prepare import prepare

SIZES = (1, 3, 5, 10, 20)  # melu cv's default support sizes
METRICS = ("ndcg@10", "recall@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", default="", help="comma-separated (default: all)")
    parser.add_argument("--baselines", default="user_knn", help=f"comma-separated of {NAMES}")
    parser.add_argument("--out", type=Path, required=True, help="per-user CSV, one per baseline")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    names = tuple(args.baselines.split(","))
    torch.set_num_threads(1)
    base = Config().replace(data=DataConfig(dataset=args.dataset, user_split="random"))
    folds = [int(f) for f in args.only_folds.split(",")] if args.only_folds else range(args.folds)
    protocol = TopNProtocol(supports=SIZES, seed=0)
    rows: dict[str, list[tuple[int, str, int, float]]] = {name: [] for name in names}
    for fold in folds:
        config = fold_config(base, fold, args.folds, 0)
        prepared = prepare(config.data, args.data_dir)
        rankers, info = fit_topn_baselines(prepared, protocol, names=names)
        result = evaluate_topn(
            prepared, rankers, protocol, scenarios=("user_cold",), candidates=("all",),
            n_boot=10, keep_per_user=True,
        )  # fmt: skip
        for setting in result["scenarios"]["user_cold"]["all"]:
            users = setting["per_user"]
            for name in names:
                m = setting["methods"][name]
                print(
                    f"fold {fold} n={setting['n']:2d} {name}: NDCG@10 {m['ndcg@10']:.4f} "
                    f"Recall@10 {m['recall@10']:.4f} shared "
                    f"{m['overlap_no_ratings']:.3f} coverage {m['coverage']:.3f} "
                    f"({info[name]['chosen']})",
                    flush=True,
                )
                for metric in METRICS:
                    values = users["methods"][name][metric]
                    for user, value in zip(users["user_ids"], values, strict=True):
                        rows[name].append((setting["n"], metric, int(user), value))
    for name, values in rows.items():
        path = args.out if len(names) == 1 else args.out.with_stem(f"{args.out.stem}-{name}")
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["n", "metric", "user_id", "value"])
            for n, metric, user, value in sorted(values):
                writer.writerow([n, metric, user, f"{value:.6g}"])
        print(f"wrote {len(values)} per-user figures to {path}")


if __name__ == "__main__":
    main()
