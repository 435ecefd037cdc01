"""Meta-training throughput: our batched MAML step vs a per-task autograd loop, same run.

Both compute the same meta-gradient (checked below: max |difference| is printed) of the
mean post-adaptation query MSE over a meta-batch of ml-100k training tasks, with MeLU's
model sizes. (a) is ``MetaTrainer.task_losses`` (tasks sorted into two size buckets,
padded + masked, each bucket adapted at once by ``adapt(..., kernel="batched")`` with
per-task MLP weights, no vmap); (b) is the textbook loop: per task, its own unpadded rows,
``torch.autograd.grad(create_graph=True)`` fast weights, then one backward. Each figure is
the best of ``--repeats`` timings. Also: peak RSS, and one full training epoch (default
config: Adam step included) plus the validation pass.

    .venv/bin/python benchmarks/meta_train.py [--device cpu|cuda] [--meta-batch 32,256]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from melu.config import Config, DataConfig, MetaConfig, TrainConfig
from melu.model.maml import Examples, masked_mse
from melu.prepare import prepare
from melu.training.train import MetaTrainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def batched_grads(trainer: MetaTrainer, batches: list[Tensor]) -> list[tuple[Tensor, ...]]:
    out = []
    for idx in batches:
        per_task, _ = trainer.task_losses(idx)
        out.append(torch.autograd.grad(per_task.mean(), list(trainer.params.values())))
    return out


def loop_grads(trainer: MetaTrainer, batches: list[Tensor]) -> list[tuple[Tensor, ...]]:
    """The straightforward reference: one task at a time, unpadded, autograd fast weights."""
    meta, model, params, tasks = (
        trainer.config.meta,
        trainer.model,
        trainer.params,
        trainer.train_tasks,
    )
    out = []
    for idx in batches:
        losses = []
        for t in idx.tolist():
            s_n, q_n = int(tasks.support_mask[t].sum()), int(tasks.query_mask[t].sum())
            user = tasks.user_rows[t : t + 1].long()
            s_feat = trainer.tables.gather(user, tasks.support_items[t : t + 1, :s_n].long())
            q_feat = trainer.tables.gather(user, tasks.query_items[t : t + 1, :q_n].long())
            s_x, q_x = model.encode(params, s_feat), model.encode(params, q_feat)  # (1, N, ...)
            s = Examples(s_feat, tasks.support_ratings[t, :s_n], tasks.support_mask[t, :s_n])
            fast = {k: params[k] for k in trainer.fast}
            lam = model.config.support_prior  # the inner loss: (SSE + λ‖θ − θ₀‖²) / (n + λ)
            for _ in range(meta.inner_steps):
                loss = masked_mse(model.score({**params, **fast}, s_x)[0], s.ratings, s.mask, lam)
                for k in model.anchored:
                    loss = loss + lam * ((fast[k] - params[k]) ** 2).sum() / (s_n + lam)
                grads = torch.autograd.grad(
                    loss, list(fast.values()), create_graph=not meta.first_order
                )
                fast = {
                    k: v - meta.inner_lr * g for (k, v), g in zip(fast.items(), grads, strict=True)
                }
            pred = model.score({**params, **fast}, q_x)[0]
            losses.append(((pred - tasks.query_ratings[t, :q_n]) ** 2).mean())
        out.append(torch.autograd.grad(torch.stack(losses).mean(), list(params.values())))
    return out


def compare(trainer: MetaTrainer, batch_size: int, n_batches: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    n = len(trainer.train_tasks)
    batches = [torch.randperm(n, generator=gen)[:batch_size] for _ in range(n_batches)]
    batches = [b.to(trainer.device) for b in batches]
    a = batched_grads(trainer, batches[:1])[0]
    b = loop_grads(trainer, batches[:1])[0]
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    tv = best_time(lambda: batched_grads(trainer, batches), trainer.device, repeats)
    tl = best_time(lambda: loop_grads(trainer, batches), trainer.device, max(1, repeats // 2))
    m = trainer.config.meta
    order = "first" if m.first_order else "second"
    tasks = batch_size * n_batches
    print(
        f"B={batch_size:<5} steps={m.inner_steps} {order:<6}| batched {n_batches / tv:7.2f} "
        f"batch/s {tasks / tv:8.0f} tasks/s | loop {n_batches / tl:7.2f} batch/s "
        f"{tasks / tl:7.0f} tasks/s | ratio {tl / tv:5.1f}x | max|Δgrad| {diff:.1e}",
        flush=True,
    )


def epoch_time(prepared, device: torch.device, repeats: int, config: Config, label: str) -> float:  # type: ignore[no-untyped-def]
    """Seconds of one training epoch of ``config`` (its own tasks or episodes); prints it."""
    trainer = MetaTrainer(config, prepared, device)
    trainer.begin_epoch(1)
    batches = trainer.meta_batches(1)

    def epoch() -> None:
        for idx in batches:
            trainer.step(idx)

    te = best_time(epoch, device, repeats)
    tv = best_time(lambda: trainer.evaluate(trainer.val_tasks), device, repeats)
    rate = len(trainer.train_tasks) / te
    print(
        f"one ml-100k epoch, {label} (second order, {trainer.config.meta.inner_steps} "
        f"steps, B={trainer.config.train.meta_batch}, {len(trainer.train_tasks)} tasks, Adam): "
        f"{te:.3f} s ({rate:.0f} tasks/s); validation pass {tv:.3f} s"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", default="32", help="comma-separated sizes")
    parser.add_argument("--steps", default="1,5", help="comma-separated inner step counts")
    parser.add_argument("--batches", type=int, default=4, help="meta-batches per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prepared = prepare(DataConfig(dataset="ml-100k"), Path(args.data_dir), args.cache_dir)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for batch_size in (int(b) for b in args.meta_batch.split(",")):
        if batch_size > len(prepared.tasks["train"]):  # sample with replacement across batches
            print(f"(B={batch_size} > {len(prepared.tasks['train'])} tasks: capped)")
            batch_size = len(prepared.tasks["train"])
        for steps in (int(s) for s in args.steps.split(",")):
            for first_order in (False, True):
                meta = MetaConfig(inner_steps=steps, first_order=first_order)
                config = Config(meta=meta, train=TrainConfig(meta_batch=batch_size))
                compare(
                    MetaTrainer(config, prepared, device), batch_size, args.batches, args.repeats
                )
    melu_rate = epoch_time(prepared, device, args.repeats, Config.melu(), "MeLU's recipe")
    ours = epoch_time(prepared, device, args.repeats, Config(), "default model")
    print(f"default model vs MeLU's recipe, tasks/s: {ours / melu_rate:.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
