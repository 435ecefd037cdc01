"""``melu evaluate``: score a model bundle on the four scenarios against the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from melu.cli.app import DataDir, Threads, app, echo, resolve_data_dir, use_threads, writable_folder
from melu.cli.progress import Steps
from melu.cli.settings import config_overrides
from melu.tasks import EVAL_SCENARIOS, SCENARIOS

if TYPE_CHECKING:
    from melu.evaluation.evaluate import Report


def resolve_model(path: Path) -> tuple[Path, Path]:
    """(bundle folder, run folder) from a run folder or its ``model/`` subfolder."""
    from melu.bundle import find_bundle

    bundle = find_bundle(path)
    return bundle, bundle.parent if bundle.name == "model" else bundle


def print_summary(report: Report) -> None:
    """Print the per-scenario summary table (MAML vs the best baseline)."""
    from melu.evaluation.report import summary_table

    echo("per-user query MAE (lower is better); MAML − best baseline with a paired 95% CI")
    echo(summary_table(report))
    if report.topn is not None:
        from melu.evaluation.topn_report import topn_verdict

        echo(topn_verdict(report.topn))


def run_evaluation(
    *,
    model: Path,
    data_dir: Path | None = None,
    out: Path | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    show_progress: bool = True,
    scenarios: tuple[str, ...] | None = None,
    inner_steps: int | None = None,
    inner_lr: float | None = None,
    topn: bool = True,
) -> Report:
    """Load the bundle, prepare its data protocol, evaluate, write ``out``, print the summary.

    ``inner_steps`` / ``inner_lr`` override the trained inner loop (for tuning on the
    ``validation`` scenario); ``scenarios`` defaults to the four test scenarios; ``topn``
    adds the full-catalog top-N study of new users (``melu.evaluation.topn_eval``).
    """
    from melu.bundle import load_bundle
    from melu.evaluation.evaluate import count_stages, evaluate
    from melu.evaluation.report import write_report
    from melu.evaluation.topn import TopNProtocol
    from melu.prepare import prepare

    bundle_dir, run_dir = resolve_model(model)
    target = writable_folder(out if out is not None else run_dir / "eval", "--out")
    bundle = load_bundle(bundle_dir)
    overrides = {"inner_steps": inner_steps, "inner_lr": inner_lr}
    meta = bundle.config.meta.replace(**{k: v for k, v in overrides.items() if v is not None})
    bundle.config = bundle.config.replace(meta=meta)
    if inner_lr is not None:
        bundle.inner_lr = None  # a fixed rate replaces learned (Meta-SGD) rates
    prepared = prepare(bundle.config.data, resolve_data_dir(data_dir), cache_dir)
    names = scenarios or EVAL_SCENARIOS
    sizes = (1, 3, 5, 10, 20)
    total = count_stages(names, sizes, topn)
    with Steps(total, "evaluate", enabled=show_progress) as bar:

        def step(message: str) -> None:
            bar.update(1, message)

        report = evaluate(
            bundle, prepared, support_sizes=sizes, seed=seed, scenarios=names, progress=step,
            topn=TopNProtocol(supports=sizes, seed=seed) if topn else None,
        )  # fmt: skip
    write_report(report, target)
    print_summary(report)
    echo(f"report: {target / 'report.md'}")
    return report


@app.command()
@config_overrides("meta.inner_steps", "meta.inner_lr", default_text="the model's")
def evaluate(
    overrides: dict[str, Any],
    model: Annotated[
        Path, typer.Option(help="Run folder (runs/NAME) or its model bundle (runs/NAME/model).")
    ],
    data_dir: DataDir = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default: <run folder>/eval).")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Task cache (default: $MELU_CACHE_DIR or .melu-cache).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the support sampling and bootstrap.")] = 0,
    progress: Annotated[bool, typer.Option(help="A line per phase (a bar on a terminal).")] = True,
    threads: Threads = 1,
    scenarios: Annotated[
        str,
        typer.Option(help="Comma-separated scenarios (validation: for tuning, never test)."),
    ] = ",".join(EVAL_SCENARIOS),
    topn: Annotated[
        bool,
        typer.Option(help="Also rank the whole catalog for new users (top-N vs baselines)."),
    ] = True,
) -> None:
    """Evaluate a model on warm, user-cold, item-cold and user-item-cold tasks.

    --inner-steps / --inner-lr replace the trained inner loop (tune them on the validation scenario; a fixed --inner-lr also replaces Meta-SGD's learned rates).
    """
    names = tuple(s.strip() for s in scenarios.split(",") if s.strip())
    unknown = [s for s in names if s not in SCENARIOS or s == "train"]
    if unknown or not names:
        raise typer.BadParameter(
            f"{', '.join(unknown) or repr(scenarios)}: choose from {', '.join(SCENARIOS[1:])}",
            param_hint="--scenarios",
        )
    use_threads(threads)
    run_evaluation(
        model=model,
        data_dir=data_dir,
        out=out,
        cache_dir=cache_dir,
        seed=seed,
        show_progress=progress,
        scenarios=names,
        inner_steps=overrides.get("meta.inner_steps"),
        inner_lr=overrides.get("meta.inner_lr"),
        topn=topn,
    )
