"""MeLU's recipe: the row-space path (``melu.model.kernel_mlp``) vs the general batched kernel.

Same process, same meta-batches, alternating rounds, CPU time. The general kernel is reached
by passing the inner rate as Meta-SGD rates of that same constant (``adapts_whole_mlp`` is
then false): per-task W₀, the hand-derived backward of ``melu.model.kernel``. Prints the max
|Δ meta-gradient| between the two and the median per-round ratio.

    MELU_DATA_DIR=/work/shared/data python benchmarks/kernel_mlp_ab.py --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from melu.config import Config
from melu.model.maml import meta_loss, task_examples, trim
from melu.prepare import prepare
from melu.training.meta_trainer import MetaTrainer, size_split

ROOT = Path(__file__).resolve().parent.parent


def grads(trainer: MetaTrainer, batches: list[Tensor], general: bool) -> list[tuple[Tensor, ...]]:
    """Meta-gradients of each meta-batch, tasks in the trainer's two size buckets."""
    lr: float | dict[str, Tensor] = trainer.config.meta.inner_lr
    if general:
        lr = {k: torch.tensor(lr) for k in trainer.fast}
    params, out = list(trainer.params.values()), []
    for idx in batches:
        sizes, rank = trainer.train_tasks.support_mask[idx].sum(1).sort(stable=True)
        losses = []
        for part in idx[rank].tensor_split(size_split(sizes, 2)):
            support, query = task_examples(trainer.train_tasks, trainer.tables, part)
            _, per_task, _ = meta_loss(
                trainer.model, trainer.params, trim(support), trim(query),
                steps=trainer.config.meta.inner_steps, lr=lr, fast=trainer.fast,
            )  # fmt: skip
            losses.append(per_task)
        out.append(torch.autograd.grad(torch.cat(losses).mean(), params))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = Config.from_dict(json.loads((ROOT / "configs/melu.json").read_text()))
    trainer = MetaTrainer(config, prepare(config.data, Path(args.data_dir)), torch.device("cpu"))
    batches = trainer.meta_batches(1)[: args.batches]
    a, b = grads(trainer, batches, False), grads(trainer, batches, True)
    diff = max(
        float((x - y).abs().max())
        for p, q in zip(a, b, strict=True)
        for x, y in zip(p, q, strict=True)
    )
    ratios = []
    for r in range(args.rounds):
        times = {}
        for general in (r % 2 == 1, r % 2 == 0):
            start = time.process_time()
            grads(trainer, batches, general)
            times[general] = time.process_time() - start
        ratios.append(times[True] / times[False])
    per_batch = 1e3 * times[False] / len(batches)
    print(f"load average {os.getloadavg()[0]:.2f}; row space {per_batch:.1f} ms/batch (last round); "
          f"general / row space CPU time: median {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}); max|Δgrad| {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
