"""``melu train``: prepare (or reuse) the tasks, meta-train, write the model bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer
from tqdm import tqdm

from melu.cli.app import DataDir, app, choice, echo, resolve_data_dir
from melu.config import Config, DataConfig, MetaConfig, ModelConfig, TrainConfig
from melu.errors import ConfigError
from melu.training.distributed import DistContext, barrier, init_distributed, shutdown

if TYPE_CHECKING:
    from melu.prepare import Prepared

DEFAULTS = Config()


class _Bar:
    """Turns the trainer's progress events into a tqdm bar with the running loss."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None  # type: ignore[type-arg]

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event["event"]
        if kind == "epoch_start":
            self.bar = tqdm(total=event["batches"], desc=f"epoch {event['epoch']}", leave=False)
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
        elif kind == "resumed":
            echo(f"resumed after epoch {event['epoch']}")


def build_config(dataset: str, **options: Any) -> Config:
    """A Config from CLI options (None = default); bad values raise ConfigError."""

    def pick(section: Any, names: tuple[str, ...]) -> Any:
        return section.replace(**{n: options[n] for n in names if options.get(n) is not None})

    data = pick(DataConfig(dataset=dataset), ("user_split", "query_order", "item_id_feature"))
    if options.get("data_seed") is not None:
        data = data.replace(seed=options["data_seed"])
    return Config(
        data=data,
        model=pick(ModelConfig(), ("fast_params",)),
        meta=pick(MetaConfig(), ("inner_steps", "inner_lr", "first_order", "learn_inner_lr")),
        train=pick(
            TrainConfig(),
            (
                "epochs",
                "meta_batch",
                "outer_lr",
                "weight_decay",
                "seed",
                "patience",
                "device",
                "amp",
                "max_tasks_per_epoch",
            ),
        ),
    )


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
    *,
    dataset: str = "ml-100k",
    data_dir: Path | None = None,
    out: Path = Path("runs/train"),
    cache_dir: Path | None = None,
    resume: bool = False,
    show_progress: bool = True,
    threads: int = 1,
    dist_timeout: float = 600.0,
    **options: Any,
) -> Path:
    """Prepare, train and return the bundle path (used by ``train`` and ``quickstart``).

    ``threads``: torch CPU threads (0 keeps torch's default). One is the default: a
    meta-batch's kernels are small, so a second thread gains ~20% on an idle 2-core
    machine but oversubscription costs several times that on a shared one.

    Under ``torchrun`` this process is one rank of a data-parallel run (gloo on CPU,
    nccl on CUDA; ``dist_timeout`` seconds bounds every collective); only rank 0 prints.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if options.pop("float64", False):
        torch.set_default_dtype(torch.float64)
    from melu.training.train import train

    config = build_config(dataset, **options)
    ctx = init_distributed(config.train.device, timeout_s=dist_timeout)
    try:
        main = show_progress and ctx.is_main
        prepared = prepare_shared(
            config, resolve_data_dir(data_dir), cache_dir, ctx, echo if main else None
        )
        if main and ctx.enabled:
            echo(f"data-parallel: {ctx.world_size} ranks on {ctx.device.type}")
        result = train(config, prepared, out, resume=resume, progress=_Bar(main), ctx=ctx)
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
def train(
    dataset: Annotated[str, typer.Option(help="MovieLens data set (e.g. ml-100k, ml-1m).")] = (
        "ml-100k"
    ),
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Run folder: metrics, checkpoint, model/.")] = Path(
        "runs/train"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = DEFAULTS.train.epochs,
    meta_batch: Annotated[int, typer.Option(min=1, help="Tasks per outer step.")] = (
        DEFAULTS.train.meta_batch
    ),
    inner_steps: Annotated[int, typer.Option(min=0)] = DEFAULTS.meta.inner_steps,
    inner_lr: float = DEFAULTS.meta.inner_lr,
    outer_lr: float = DEFAULTS.train.outer_lr,
    first_order: Annotated[bool, typer.Option(help="FOMAML (no second-order terms).")] = False,
    learn_inner_lr: Annotated[bool, typer.Option(help="Meta-SGD: learned inner rates.")] = False,
    fast_params: Annotated[str, typer.Option(help="Adapted group: mlp, head or all.")] = (
        DEFAULTS.model.fast_params
    ),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[str, typer.Option(help="none or bf16 (autocast the forward).")] = "none",
    weight_decay: Annotated[float, typer.Option(min=0, help="Adam weight decay.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Training seed (init, batch order).")] = (
        DEFAULTS.train.seed
    ),
    user_split: Annotated[
        str, typer.Option(help="Data protocol: time (by first rating) or random users.")
    ] = DEFAULTS.data.user_split,
    query_order: Annotated[
        str, typer.Option(help="Data protocol: random query ratings or each user's last (time).")
    ] = DEFAULTS.data.query_order,
    item_id: Annotated[
        bool, typer.Option(help="Embed item ids of items with enough training ratings.")
    ] = DEFAULTS.data.item_id_feature,
    data_seed: Annotated[int, typer.Option(help="Seed of the data protocol's splits.")] = (
        DEFAULTS.data.seed
    ),
    patience: Annotated[int, typer.Option(min=1)] = DEFAULTS.train.patience,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Task cache folder.")] = None,
    threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: all).")] = 1,
    max_tasks_per_epoch: Annotated[
        int | None, typer.Option(min=1, help="Cap on training tasks per epoch (default: all).")
    ] = None,
    dist_timeout: Annotated[
        float, typer.Option(min=1, help="torchrun: seconds a rank may wait in a collective.")
    ] = 600.0,
    float64: Annotated[
        bool, typer.Option(hidden=True, help="Compute in float64 (numerical checks only).")
    ] = False,
) -> None:
    """Meta-train the preference estimator and write the model bundle to OUT/model.

    Data-parallel on N processes: ``torchrun --nproc_per_node=N -m melu train ...``.
    """
    choice("--fast-params", fast_params, ("mlp", "head", "all"))
    choice("--device", device, ("auto", "cpu", "cuda"))
    choice("--amp", amp, ("none", "bf16"))
    choice("--user-split", user_split, ("time", "random"))
    choice("--query-order", query_order, ("random", "time"))
    try:
        build_config(dataset, inner_lr=inner_lr, outer_lr=outer_lr)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_training(
        dataset=dataset,
        data_dir=data_dir,
        out=out,
        cache_dir=cache_dir,
        resume=resume,
        threads=threads,
        dist_timeout=dist_timeout,
        float64=float64,
        max_tasks_per_epoch=max_tasks_per_epoch,
        epochs=epochs,
        meta_batch=meta_batch,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        outer_lr=outer_lr,
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
        fast_params=fast_params,
        device=device,
        amp=amp,
        seed=seed,
        patience=patience,
        weight_decay=weight_decay,
        user_split=user_split,
        query_order=query_order,
        item_id_feature=item_id,
        data_seed=data_seed,
    )
