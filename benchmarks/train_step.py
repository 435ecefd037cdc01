"""One meta-training step of the default model: time, aten ops and the FLOP floor, against
the previous implementation in the same run.

Each round runs this script's worker twice, one fresh process per implementation, in
alternating order: this tree and ``--old`` (a checkout of the commit to compare with, e.g.
``git worktree add /tmp/ops-old 4c2c0d9``), put first on ``PYTHONPATH``. Both build
``MetaTrainer(Config(meta_batch=B))`` on ML-100K, draw the same seeded meta-batches from the
first epoch's episodes (B tasks without replacement, or with replacement when B exceeds the
658 episodes) and run full ``MetaTrainer.step`` calls (meta-loss, meta-gradient, clip,
Adam). Reported per implementation: the median (and best) ms/step over ``--steps`` timed steps (after
``--warmup``), aten ops/step (``torch.profiler`` events, nested ones included, as counted in
issue 18), and the ratio of the best step to the FLOP floor (best-of against the matmul
rate's best-of, so the machine's load does not enter one side only); per round the old /
new ratio of median times.

The FLOP floor is the matmul work the step needs on the real, unpadded rows of its tasks:
per row (support and query) the MLP's item half (2·E_i·H₁), hidden and output layers
(2·Hᵢ·Hᵢ₊₁), the content map (2·E_i·(k+1)) and the p_u·q_i dot (2k); per task the first
layer's user half (2·E_u·H₁) and the prior (2·E_u·(k+1)); per inner step and support row
the prediction and gradient of the user offsets (4k). The backward pass costs twice its
forward (input and weight gradients), so floor = 3 × forward. Embedding lookups, masks and
Adam (memory-bound, O(parameters)) are not counted. Floor time = floor FLOP / the rate of
this machine's matmul at the first layer's shape, measured in the same worker.

    MELU_DATA_DIR=/work/shared/data python benchmarks/train_step.py --old /tmp/ops-old \\
        --meta-batch 32,1024 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(n_tasks: int, size: int, count: int) -> list[torch.Tensor]:
    """``count`` seeded meta-batches of ``size`` task indices (with replacement past n)."""
    gen = torch.Generator().manual_seed(18)
    if size <= n_tasks:
        return [torch.randperm(n_tasks, generator=gen)[:size] for _ in range(count)]
    return [torch.randint(0, n_tasks, (size,), generator=gen) for _ in range(count)]


def floor_flops(trainer: Any, index: torch.Tensor) -> float:
    """The matmul FLOP one step of tasks ``index`` needs on its real rows (module doc)."""
    model, tasks, steps = trainer.model, trainer.train_tasks, trainer.config.meta.inner_steps
    n_support = float(tasks.support_mask[index].sum())
    rows = n_support + float(tasks.query_mask[index].sum())
    k, e_u = model.factors, model.user_width
    e_i = model.embedding_width - e_u
    widths = model.widths  # (in, out) per Linear
    per_row = 2 * e_i * widths[0][1] + sum(2 * a * b for a, b in widths[1:])
    per_row += 2 * e_i * (k + 1) + 2 * k
    per_task = 2 * e_u * widths[0][1] + 2 * e_u * (k + 1)
    forward = rows * per_row + len(index) * per_task + steps * n_support * 4 * k
    return 3 * forward


def matmul_rate(rows: int, n_in: int, n_out: int, device: torch.device) -> float:
    """FLOP/s of (rows × n_in) @ (n_in × n_out) on ``device``, best of 20 timings."""
    a, b = torch.randn(rows, n_in, device=device), torch.randn(n_in, n_out, device=device)
    best = float("inf")
    for _ in range(20):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * rows * n_in * n_out / best


def aten_ops(trainer: Any, steps: list[torch.Tensor]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for index in steps:
            trainer.step(index)
    events = prof.key_averages()
    return sum(e.count for e in events if e.key.startswith("aten::")) / len(steps)


def worker(args: argparse.Namespace) -> None:
    """Time one implementation (whichever ``melu`` is importable); print one JSON line."""
    import melu
    from melu.config import Config, TrainConfig
    from melu.prepare import prepare
    from melu.training.meta_trainer import MetaTrainer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = Config(train=TrainConfig(meta_batch=args.size, device=args.device))
    prepared = prepare(config.data, Path(args.data_dir), args.cache_dir)
    trainer = MetaTrainer(config, prepared, device)
    trainer.begin_epoch(1)
    drawn = [
        b.to(device)
        for b in batches(len(trainer.train_tasks), args.size, args.warmup + args.steps + 2)
    ]
    for index in drawn[: args.warmup]:
        trainer.step(index)
    times = []
    for index in drawn[args.warmup : args.warmup + args.steps]:
        sync(device)
        start = time.perf_counter()
        trainer.step(index)
        sync(device)
        times.append(time.perf_counter() - start)
    ops = aten_ops(trainer, drawn[-2:])
    flops = statistics.mean(floor_flops(trainer, b) for b in drawn[args.warmup :])
    model = trainer.model
    rows = int(
        trainer.train_tasks.support_mask[drawn[0]].sum()
        + trainer.train_tasks.query_mask[drawn[0]].sum()
    )
    rate = matmul_rate(rows, model.embedding_width - model.user_width, model.widths[0][1], device)
    ms, best = statistics.median(times) * 1e3, min(times) * 1e3
    floor_ms = flops / rate * 1e3
    out = {"melu": str(Path(melu.__file__).parent.parent), "ms": ms, "best": best, "ops": ops,
           "mflop": flops / 1e6, "gflops": rate / 1e9, "floor_ms": floor_ms,
           "x_floor": best / floor_ms}  # fmt: skip
    print(json.dumps(out), flush=True)


def run_one(root: Path, args: argparse.Namespace, size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--meta-batch", str(size), "--device", args.device,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--data-dir", args.data_dir] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker for {root} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--meta-batch", default="32,1024", help="comma-separated sizes")
    parser.add_argument("--old", default=None, help="checkout of the implementation to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data-dir", default=os.environ.get("MELU_DATA_DIR", "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.size = int(args.meta_batch)
        return worker(args)
    roots = {"new": HERE} | ({"old": Path(args.old).resolve()} if args.old else {})
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} torch thread(s); "
          f"new = {HERE}" + (f", old = {roots['old']}" if args.old else ""), flush=True)  # fmt: skip
    for size in (int(s) for s in args.meta_batch.split(",")):
        ratios: list[float] = []
        seen: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
        for r in range(args.rounds):
            order = list(roots) if r % 2 == 0 else list(reversed(roots))
            got = {name: run_one(roots[name], args, size) for name in order}
            for name, res in got.items():
                seen[name].append(res)
                print(f"B={size:<5} round {r} {name}: {res['ms']:7.2f} ms/step (best {res['best']:6.2f})  {res['ops']:6.0f} "
                      f"aten ops/step  floor {res['mflop']:.0f} MFLOP = {res['floor_ms']:.2f} ms at "
                      f"{res['gflops']:.0f} GFLOP/s  -> {res['x_floor']:5.1f}x floor", flush=True)  # fmt: skip
            if "old" in got:
                ratios.append(got["old"]["ms"] / got["new"]["ms"])
        for name, results in seen.items():
            ms = statistics.median(x["ms"] for x in results)
            xf = statistics.median(x["x_floor"] for x in results)
            print(f"B={size:<5} {name}: median {ms:.2f} ms/step, {results[-1]['ops']:.0f} aten ops/step, "
                  f"{xf:.1f}x its FLOP floor (median over rounds)")  # fmt: skip
        if ratios:
            print(f"B={size:<5} old / new time, paired per round: "
                  f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
