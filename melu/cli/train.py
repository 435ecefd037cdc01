"""``melu train``: prepare (or reuse) the tasks, meta-train, write the model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from melu.cli.app import DataDir, Threads, app, echo, resolve_data_dir, use_threads, writable_folder
from melu.cli.progress import bar
from melu.cli.settings import config_options
from melu.config import Config
from melu.training.distributed import DistContext, barrier, init_distributed, shutdown

if TYPE_CHECKING:
    from melu.prepare import Prepared


class _Bar:
    """Turns the trainer's progress events into one line per epoch (the log) and, on a
    terminal only, a tqdm bar over the epoch's meta-batches with the running loss."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event["event"]
        if kind == "epoch_start":
            self.bar = bar(total=event["batches"], desc=f"epoch {event['epoch']}", leave=False)
        elif kind == "batch" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}")
        elif kind == "epoch_end":
            if self.bar is not None:
                self.bar.close()
            echo(
                f"epoch {event['epoch']:>3}  loss {event['train_loss']:.4f}  "
                f"val MAE {event['val_mae_before']:.4f} → {event['val_mae_after']:.4f}  "
                f"({event['seconds']:.1f}s, {event['tasks_per_s']:.0f} tasks/s)"
            )
        elif kind == "rank_epoch_end":  # the ranking head, trained after the rating part
            loss = event["rank_loss"]
            shown = f"loss {loss:.4f}" if loss is not None else "(its start)"
            echo(
                f"ranking epoch {event['epoch']:>3}  {shown}  "
                f"val NDCG@10 {event['val_ndcg@10']:.4f}"
            )
        elif kind == "resumed":
            echo(f"resumed after epoch {event['epoch']}")


def prepare_shared(
    config: Config, data_dir: Path, cache_dir: Path | None, ctx: DistContext, say: Any
) -> Prepared:
    """The tasks for this rank, memory-mapped from the cache (bounded memory).

    Local rank 0 of each node builds the cache if needed while the others wait at a
    barrier; then every rank opens it with ``mmap``: the TaskSets stay on disk and in the
    shared page cache, and only each meta-batch's rows are read. One copy per machine,
    whatever the number of ranks.
    """
    from melu.prepare import load_prepared, prepare

    prepared = None
    if ctx.local_rank == 0:
        prepared = prepare(config.data, data_dir, cache_dir, progress=say, mmap=True)
    barrier(ctx)
    if prepared is None:
        prepared = prepare(config.data, data_dir, cache_dir, mmap=True)
    if prepared.path is None:
        return prepared
    return load_prepared(prepared.path, mmap=True)


def run_training(
    config: Config,
    *,
    data_dir: Path | None = None,
    out: Path = Path("runs/train"),
    cache_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    threads: int = 1,
    dist_timeout: float = 600.0,
    float64: bool = False,
) -> Path:
    """Prepare, train on ``config`` and return the bundle path (``train``, ``quickstart``).

    ``threads``: torch CPU threads (0 keeps torch's default). One is the default: a
    meta-batch's kernels are small, so a second thread gains ~20% on an idle 2-core
    machine but oversubscription costs several times that on a shared one.
    ``show_progress``: the data preparation's lines, one line per epoch and (on a
    terminal) a bar per epoch; the final summary is printed either way.
    ``float64``: compute in float64 (numerical checks only).

    Under ``torchrun`` this process is one rank of a data-parallel run (gloo on CPU,
    nccl on CUDA; ``dist_timeout`` seconds bounds every collective); only rank 0 prints.
    """
    writable_folder(out, "--out")
    use_threads(threads)
    if float64:
        torch.set_default_dtype(torch.float64)
    from melu.training.train import train

    ctx = init_distributed(config.train.device, timeout_s=dist_timeout)
    try:
        main, show = ctx.is_main, show_progress and ctx.is_main
        prepared = prepare_shared(
            config, resolve_data_dir(data_dir), cache_dir, ctx, echo if show else None
        )
        if show and ctx.enabled:
            echo(f"data-parallel: {ctx.world_size} ranks on {ctx.device.type}")
        result = train(config, prepared, out, resume=resume, progress=_Bar(show), ctx=ctx)
    finally:
        shutdown(ctx)
    if main:
        echo(
            f"best epoch {result.best_epoch}: validation MAE "
            f"{result.metrics.get('val_mae_before', float('nan')):.4f} before → "
            f"{result.metrics.get('val_mae_after', float('nan')):.4f} after adaptation"
        )
        echo(f"model bundle: {result.bundle}")
    return result.bundle


@app.command()
@config_options()
def train(
    config: Config,
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Run folder: metrics, checkpoint, model/.")] = Path(
        "runs/train"
    ),
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Task cache folder.")] = None,
    threads: Threads = 1,
    progress: Annotated[
        bool, typer.Option(help="Per-epoch lines (and a bar on a terminal); off: the summary only.")
    ] = True,
    dist_timeout: Annotated[
        float, typer.Option(min=1, help="torchrun: seconds a rank may wait in a collective.")
    ] = 600.0,
    float64: Annotated[
        bool, typer.Option(hidden=True, help="Compute in float64 (numerical checks only).")
    ] = False,
) -> None:
    """Meta-train the preference estimator and write the model bundle to OUT/model.

    Every setting of the data protocol, the model, the inner and the outer loop is a flag below, or comes from --config FILE (flags given override it).

    Data-parallel on N processes: torchrun --nproc_per_node=N -m melu train ...
    """
    run_training(
        config,
        data_dir=data_dir,
        out=out,
        cache_dir=cache_dir,
        resume=resume,
        show_progress=progress,
        threads=threads,
        dist_timeout=dist_timeout,
        float64=float64,
    )
