"""The ranking head's part-weight pick (``rank_mix.pick_mixing``): batched grid vs one mix
at a time.

The pick tries every (π, γ, c) of its grid on every validation draw of every support-size
bucket (19 × 9 × 6 mixes per bucket and pass) and judges each by NDCG@10 and Recall@10.
``_search`` judges the six c of a (π, γ) at once, as one (6, U, I) top-10, with each
draw's relevance counts kept; the baseline here is the straightforward search, one mix at
a time through ``topn.user_metrics`` (what the library did before). Both run in the same
process on the same validation draws, alternating, and must pick the same weights.

    python benchmarks/rank_pick.py --data-dir ../shared/data --repeats 2 [--walk-blend] [--draws]
        [--neighbours]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from melu.config import Config, DataConfig, RankMixMetric, TrainConfig
from melu.evaluation.topn import topn_users, user_metrics
from melu.model.estimator import PreferenceEstimator
from melu.model.ranking import FREE_LAST
from melu.prepare import prepare
from melu.training import rank_mix
from melu.training.rank_epoch import HeadTrainer
from melu.training.rank_judge import Pooled, Setting
from melu.training.rank_mix import AFTER, EASE_SHARES, GRID, SEARCHED
from melu.training.rank_train import VALIDATION_SUPPORTS, _start


def one_at_a_time(
    settings: Sequence[Setting], current: dict[str, float], max_shared: float,
    metric: RankMixMetric, passes: int = 1, blend: bool = True, ease: float = 1.0,
    walk: bool = False,
) -> tuple[Pooled, Pooled, dict[str, float]]:  # fmt: skip
    """``rank_mix._search`` as it was: every mix judged on its own by ``topn.user_metrics``
    (the same trials in the same order, the same partial sums down the grid); the walk in
    the blend stage is not part of that comparison (``--walk-blend`` times it)."""
    assert not walk, "the one-at-a-time reference has no walk blend"

    def judge(scores: list[torch.Tensor]) -> Pooled:
        ndcg, recall, shared = [], [], []
        for s, x in zip(settings, scores, strict=True):
            top = x.topk(10, dim=1).indices
            got = user_metrics(top, s.relevant, (10,))
            ndcg.append(got["ndcg@10"])
            recall.append(got["recall@10"])
            if s.empty is not None:
                shared.append((top.unsqueeze(2) == s.empty.unsqueeze(1)).any(2).double().mean(1))
        share = float(torch.cat(shared).mean()) if shared else 0.0
        return Pooled(float(torch.cat(ndcg).nanmean()), float(torch.cat(recall).nanmean()), share)

    start = kept = judge([s.scores(current) for s in settings])

    def objective(got: Pooled) -> float:
        return rank_mix.mix_objective(got.ndcg, got.recall, start.ndcg, start.recall, metric)

    best = objective(start) if start.shared <= max_shared else -1.0

    def better(got: Pooled) -> bool:
        nonlocal best, kept
        if objective(got) > best + 1e-6 and got.shared <= max_shared:
            best, kept = objective(got), got
            return True
        return False

    rows = [1 + rank_mix.PARTS.index(k) for k in SEARCHED]
    for _ in range(passes):
        blends = itertools.product(EASE_SHARES, GRID["rank.liked_weight"]) if blend else ()
        for share, liked in blends:
            mix = {**current, "rank.ease_weight": share * ease, "rank.liked_weight": liked}
            if better(judge([s.scores(mix) for s in settings])):
                current = mix
        fixed = [s.scores({**current, **dict.fromkeys(SEARCHED, 0.0)}) for s in settings]
        for w_pop in GRID[SEARCHED[0]]:
            with_pop = [f + w_pop * s.parts[rows[0]] for f, s in zip(fixed, settings, strict=True)]
            for w_rate in GRID[SEARCHED[1]]:
                with_rate = [
                    p + w_rate * s.parts[rows[1]] for p, s in zip(with_pop, settings, strict=True)
                ]
                for w_cooc in GRID[SEARCHED[2]]:
                    got = judge(
                        [
                            r + w_cooc * s.parts[rows[2]]
                            for r, s in zip(with_rate, settings, strict=True)
                        ]
                    )
                    if better(got):
                        current = {
                            **current,
                            **dict(zip(SEARCHED, (w_pop, w_rate, w_cooc), strict=True)),
                        }
        for name in AFTER:
            for value in GRID[name]:
                mix = {**current, name: value}
                if better(judge([s.scores(mix) for s in settings])):
                    current = mix
    return start, kept, current


def alternate(
    trainer: HeadTrainer, config: Config, start: dict[str, torch.Tensor], repeats: int,
    trains: dict[str, TrainConfig], new_draws: bool = False,
    starts: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, list[float]]:  # fmt: skip
    """label → the seconds of each whole pick (``trainer.remix``) under that label's train
    settings, the settings taking turns ``repeats`` times; printed as they are timed.
    ``new_draws``: the validation draws rebuilt before each pick (the trainer keeps the
    draws it built, so settings that change them need it). ``starts``: a label's own head
    to pick from, instead of ``start``."""
    times: dict[str, list[float]] = {label: [] for label in trains}
    for _ in range(repeats):
        for label, train in trains.items():
            trainer.config = config.replace(train=train)
            if new_draws:
                trainer.mix_users = None
            head = {k: v.clone() for k, v in (starts or {}).get(label, start).items()}
            began = time.perf_counter()
            trainer.remix(head, lambda _e: None)
            times[label].append(time.perf_counter() - began)
    for label, values in times.items():
        print(f"  {label:18s} median {statistics.median(values):6.2f} s"
              f"  ({', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("MELU_DATA_DIR", "data"))
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--walk-blend", action="store_true",
        help="also time the pick with the walk in the blend stage against without",
    )  # fmt: skip
    parser.add_argument(
        "--draws", action="store_true",
        help="also time the pick at 4 support draws per user (the default) against 2",
    )  # fmt: skip
    parser.add_argument(
        "--neighbours", action="store_true",
        help="also time the pick with the user-kNN part (the default) against without",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prepared = prepare(DataConfig(dataset="ml-100k"), args.data_dir, args.cache_dir)
    train = TrainConfig(device="cpu", rank_mix_passes=1, rank_mix_walk_blend=False)
    config = Config(data=prepared.config, train=train)
    model = PreferenceEstimator(config.model, prepared.features)
    torch.manual_seed(0)
    rating = {k: v for k, v in model.init_params().items() if not k.startswith("rank.")}
    val_users = [topn_users(prepared, "validation", n) for n in VALIDATION_SUPPORTS]
    device = torch.device("cpu")
    trainer = HeadTrainer(config, model, rating, prepared, device, config.meta.inner_lr, val_users)
    start, _ = _start(config, model, prepared, trainer.ids, val_users, lambda _e: None)
    batched_search = rank_mix._search
    times: dict[str, list[float]] = {"batched grid": [], "one mix at a time": []}
    picked: dict[str, dict[str, torch.Tensor]] = {}
    for _ in range(args.repeats):
        for name, search in (
            ("batched grid", batched_search),
            ("one mix at a time", one_at_a_time),
        ):
            head = {k: v.clone() for k, v in start.items()}
            rank_mix._search = search  # type: ignore[assignment]
            began = time.perf_counter()
            trainer.remix(head, lambda _e: None)  # pick_mixing on the validation draws
            times[name].append(time.perf_counter() - began)
            picked[name] = {k: head[k] for k in rank_mix.PARTS}
    rank_mix._search = batched_search
    same = all(
        torch.equal(picked["batched grid"][k], picked["one mix at a time"][k])
        for k in rank_mix.PARTS
    )
    print(
        f"ML-100K validation draws, 5 buckets, 1 pass, {args.threads} thread(s), {args.repeats} repeats"
    )
    for name, values in times.items():
        print(
            f"  {name:18s} median {statistics.median(values):6.2f} s  ({', '.join(f'{v:.2f}' for v in values)})"
        )
    ratio = statistics.median(times["one mix at a time"]) / statistics.median(times["batched grid"])
    print(
        f"  speed-up (median, one at a time / batched): x{ratio:.2f}; same weights picked: {same}"
    )
    if args.walk_blend:  # the cost of the walk in the blend stage, the same draws, alternating
        walks = {"walk after the grid": False, "walk in the blend": True}
        costs = alternate(trainer, config, start, args.repeats, {
            label: train.replace(rank_mix_walk_blend=walk) for label, walk in walks.items()
        })  # fmt: skip
        cost = statistics.median(costs["walk in the blend"]) / statistics.median(
            costs["walk after the grid"]
        )
        print(f"  the walk in the blend costs x{cost:.2f} the pick (median)")
    if args.draws:  # the cost of 4 draws per user against 2, the same users, alternating
        draws = {"2 draws per user": 2, "4 draws per user": 4}
        costs = alternate(trainer, config, start, args.repeats, {
            label: train.replace(rank_mix_draws=n) for label, n in draws.items()
        }, new_draws=True)  # fmt: skip
        cost = statistics.median(costs["4 draws per user"]) / statistics.median(
            costs["2 draws per user"]
        )
        print(f"  4 draws cost x{cost:.2f} the pick of 2 (median)")
    if args.neighbours:  # the cost of the user-kNN part, the same draws, alternating
        without = {**start, **{k: start[k][..., :0] for k in FREE_LAST}}  # no neighbours
        costs = alternate(
            trainer, config, start, args.repeats,
            {"without user-kNN": train, "with user-kNN": train},
            starts={"without user-kNN": without},
        )  # fmt: skip
        cost = statistics.median(costs["with user-kNN"]) / statistics.median(
            costs["without user-kNN"]
        )
        print(f"  the user-kNN part costs x{cost:.2f} the pick (median)")


if __name__ == "__main__":
    main()
