"""Meta-training speed, like for like: melu's batched meta-gradient vs a plain per-task loop
and vs the ``higher`` library, on the same ML-100K training tasks, in one run.

Every side computes the meta-gradient of the mean post-adaptation query MSE of the same
meta-batches, from the same weights (the trainer's seeded initialisation):

- melu: ``MetaTrainer.task_losses`` (what ``melu train`` runs: tasks sorted into size
  buckets, gathered, padded + masked, adapted together by ``adapt(..., kernel="batched")``)
  and one ``torch.autograd.grad``;
- plain: what a user writes from the recipe, per task: ``torch.func.functional_call`` +
  ``torch.autograd.grad(create_graph=True)`` (see ``benchmarks/meta_refs.py``: frozen
  inputs computed once per task, unpadded rows, features gathered outside the timing);
- higher: ``higher.innerloop_ctx`` on the same module (skipped if ``higher`` is not
  installed: ``pip install -e '.[bench]'``).

Timed alike: one warm-up pass each (also the gradient check: max |Δ meta-gradient| vs
melu), then ``--rounds`` rounds; in each round every side runs the same ``--batches``
meta-batches once, in an order that rotates between rounds. Ratios (side / melu, wall and
CPU time) are paired within a round; the median over rounds is printed.

    MELU_DATA_DIR=/work/shared/data python benchmarks/meta_train.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from meta_refs import Reference, gather_tasks, higher_available, higher_loop, plain_loop
from torch import Tensor

from melu.config import Config
from melu.prepare import prepare
from melu.training.meta_trainer import MetaTrainer

Side = Callable[[], list[tuple[Tensor, ...]]]  # one pass: meta-gradients per meta-batch
ROOT = Path(__file__).resolve().parent.parent


def melu_side(trainer: MetaTrainer, batches: list[Tensor]) -> Side:
    params = list(trainer.params.values())

    def run() -> list[tuple[Tensor, ...]]:
        out = []
        for idx in batches:
            per_task, _ = trainer.task_losses(idx)
            out.append(torch.autograd.grad(per_task.mean(), params))
        return out

    return run


def ref_side(trainer: MetaTrainer, batches: list[Tensor], loop: Callable) -> Side:  # type: ignore[type-arg]
    ref = Reference(trainer)
    tasks = [gather_tasks(trainer, idx) for idx in batches]
    params = [ref.params[k] for k in trainer.params]

    def run() -> list[tuple[Tensor, ...]]:
        return [torch.autograd.grad(loop(ref, t), params) for t in tasks]

    return run


def timed(fn: Side) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def max_diff(a: list[tuple[Tensor, ...]], b: list[tuple[Tensor, ...]]) -> float:
    return max(
        float((x - y).abs().max())
        for ga, gb in zip(a, b, strict=True)
        for x, y in zip(ga, gb, strict=True)
    )


def compare(trainer: MetaTrainer, label: str, batches: list[Tensor], rounds: int) -> dict:  # type: ignore[type-arg]
    sides: dict[str, Side] = {
        "melu": melu_side(trainer, batches),
        "plain": ref_side(trainer, batches, plain_loop),
    }
    if higher_available():
        sides["higher"] = ref_side(trainer, batches, higher_loop)
    warm = {k: fn() for k, fn in sides.items()}  # the same warm-up pass for every side
    diffs = {k: max_diff(warm["melu"], g) for k, g in warm.items() if k != "melu"}
    names, times = list(sides), {k: [] for k in sides}  # type: ignore[var-annotated]
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(timed(sides[k]))
    n_tasks = sum(len(b) for b in batches)
    m = trainer.config.meta
    row = {
        "model": label, "steps": m.inner_steps, "order": "first" if m.first_order else "second",
        "B": len(batches[0]), "tasks_per_s": {
            k: n_tasks / statistics.median(w for w, _ in t) for k, t in times.items()
        },
    }  # fmt: skip
    for k in names[1:]:
        wall = [t[0] / o[0] for t, o in zip(times[k], times["melu"], strict=True)]
        cpu = [t[1] / o[1] for t, o in zip(times[k], times["melu"], strict=True)]
        row[k] = {
            "wall": statistics.median(wall), "cpu": statistics.median(cpu),
            "wall_range": (min(wall), max(wall)), "max_grad_diff": diffs[k],
            "wall_rounds": wall,
        }  # fmt: skip
    print_row(row)
    return row


def print_row(row: dict) -> None:  # type: ignore[type-arg]
    rate = row["tasks_per_s"]
    head = f"{row['model']:<8} B={row['B']} steps={row['steps']} {row['order']:<6}"
    parts = [f"melu {rate['melu']:6.0f} tasks/s"]
    for k in ("plain", "higher"):
        if k in row:
            r = row[k]
            lo, hi = r["wall_range"]
            parts.append(
                f"{k} {rate[k]:5.0f} tasks/s, {r['wall']:4.1f}x wall ({lo:.1f}-{hi:.1f}) "
                f"{r['cpu']:4.1f}x cpu, max|Δgrad| {r['max_grad_diff']:.1e}"
            )
    print(head + " | " + " | ".join(parts), flush=True)
    for k in ("plain", "higher"):
        if k in row:
            rounds = " ".join(f"{x:.1f}" for x in row[k]["wall_rounds"])
            print(f"    {k} / melu wall per round: {rounds}", flush=True)


def configs(which: str) -> dict[str, Config]:
    out = {}
    if which in ("both", "melu"):
        out["melu"] = Config.from_dict(json.loads((ROOT / "configs/melu.json").read_text()))
    if which in ("both", "default"):
        out["default"] = Config()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", choices=["both", "melu", "default"])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--steps", default="1,5", help="comma-separated inner step counts")
    parser.add_argument("--order", default="second,first", help="second and/or first")
    parser.add_argument("--batches", type=int, default=4, help="meta-batches per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"higher {'installed' if higher_available() else 'not installed, skipped'}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    rows = []
    for label, base in configs(args.model).items():
        prepared = prepare(base.data, Path(args.data_dir), args.cache_dir)
        for steps in (int(s) for s in args.steps.split(",")):
            for order in args.order.split(","):
                meta = dataclasses.replace(
                    base.meta, inner_steps=steps, first_order=order == "first"
                )
                train = dataclasses.replace(base.train, meta_batch=args.meta_batch)
                config = dataclasses.replace(base, meta=meta, train=train)
                trainer = MetaTrainer(config, prepared, torch.device("cpu"))
                trainer.begin_epoch(1)  # the default model's episodes and hidden items
                batches = trainer.meta_batches(1)[: args.batches]
                rows.append(compare(trainer, label, batches, args.rounds))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
