"""The ranking head's validation study (RESULTS.md, "What was tried for the head").

Retrains only the ranking head of each fold of a finished ``melu cv`` study (its rating part
read from the fold's checkpoint) under the settings given, and prints each fold's best
validation NDCG@10 (mean over supports of 3, 5 and 10) and their mean. Only validation
users are scored; test users are never looked at.

    python studies/rank_head_validation.py --study runs/cv-ml-100k
    python studies/rank_head_validation.py --study runs/cv-ml-100k --set rank_lr=1e-4
    python studies/rank_head_validation.py --study runs/cv-ml-100k --set rank_start=popularity
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from melu.config import Config
from melu.model.estimator import PreferenceEstimator
from melu.prepare import prepare
from melu.training.rank_train import train_ranking


def _show(event: dict) -> None:
    if event.get("event") == "rank_mix":
        print("  mixing, per bucket, before:", [round(v, 4) for v in event["before"]])
        print("                       after:", [round(v, 4) for v in event["after"]])
        if "recall_after" in event:
            print("  Recall@10, before:", [round(v, 4) for v in event["recall_before"]])
            print("              after:", [round(v, 4) for v in event["recall_after"]], flush=True)
    if event.get("event") == "rank_epoch_end":
        per_n = " ".join(f"{n}:{v:.4f}" for n, v in event["val_by_support"].items())
        loss = event["rank_loss"]
        print(
            f"  epoch {event['epoch']} loss {loss} val {event['val_ndcg@10']:.4f} ({per_n})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a melu cv --out folder")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE of TrainConfig")
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    parser.add_argument("--folds", default="", help="only these folds, e.g. 0,1 (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    changes = {
        k: json.loads(v) if v[:1] in "0123456789-[{tfn" else v
        for k, v in (item.split("=", 1) for item in args.set)
    }  # numbers, booleans as JSON
    scores = []
    wanted = {int(f) for f in args.folds.split(",") if f}
    for folder in sorted((args.study / "folds").glob("fold*-seed*")):
        if wanted and int(folder.name[4:].split("-")[0]) not in wanted:
            continue
        checkpoint = folder / "run" / "checkpoint"
        state = json.loads((checkpoint / "state.json").read_text())
        saved = state["config"]
        saved["train"] = {**saved["train"], **changes}
        config = Config.from_dict(saved)
        prepared = prepare(config.data, args.data_dir)
        model = PreferenceEstimator(config.model, prepared.features)
        tensors = load_file(checkpoint / "tensors.safetensors")
        rating = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        result = train_ranking(
            config,
            model,
            rating,
            prepared,
            torch.device("cpu"),
            config.meta.inner_lr,
            progress=_show if args.verbose else None,
        )
        best = result.settings["kept"]
        scores.append(best["val_ndcg@10"])
        if args.verbose and "mixing" in result.settings:
            print("  weights:", result.settings["mixing"])
        per_n = " ".join(f"n={n}: {v:.4f}" for n, v in best["val_by_support"].items())
        print(
            f"{folder.name}: best epoch {result.best_epoch}, validation NDCG@10 "
            f"{scores[-1]:.4f} ({per_n})", flush=True,
        )  # fmt: skip
    if scores:
        print(f"mean over {len(scores)} folds: {sum(scores) / len(scores):.4f}")


if __name__ == "__main__":
    main()
