"""An evaluation ``Report`` as files a person reads: report.json, report.md and PNG plots.

``write_report`` builds everything in a temporary sibling folder and renames it onto
``out``, so a failed run never leaves a half-written report. The plotting functions build
matplotlib ``Figure`` objects without pyplot (no global backend or state; rendered by Agg)
and are reused by the notebooks (``figure_png`` gives the PNG bytes to display).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from melu.atomic import atomic_directory
from melu.evaluation.evaluate import METHODS, SUPPORT_BASELINES, Report
from melu.evaluation.report_tables import (
    baselines_table,
    identical_methods,
    identical_note,
    summary_markdown,
    verdict,
)
from melu.evaluation.topn_report import plot_topn, topn_markdown

LABELS = {
    "maml_before": "MAML, 0 steps",
    "maml_after": "MAML, adapted",
    "global_mean": "global mean",
    "item_mean": "item mean (shrunk)",
    "baseline_predictor": "μ + b_i + b_u",
    "mf": "MF + fold-in",
    "pooled": "pooled",
    "pooled_finetune": "pooled + fine-tune",
}
PLOTS = ("methods.png", "steps_curve.png", "support_curve.png")
TOPN_PLOT = "topn.png"
CURVES = ("maml", "pooled_finetune", *SUPPORT_BASELINES)  # methods on the support curves
METHOD_COLORS = {  # one distinct colour per method in every plot
    "maml_before": "#9ecae1",
    "maml_after": "#08519c",
    "global_mean": "#7f7f7f",
    "item_mean": "#000000",
    "baseline_predictor": "#2ca02c",
    "mf": "#d62728",
    "pooled": "#ff7f0e",
    "pooled_finetune": "#9467bd",
}


def _ci(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_rows(report: Report) -> list[dict[str, Any]]:
    """One row per scenario: MAML before/after, the best baseline and the paired difference."""
    rows = []
    for name, sc in report.scenarios.items():
        cmp, methods = sc["comparison"], sc["methods"]
        best = cmp["baseline"]
        verdict = (
            "MAML better"
            if cmp["mae"]["maml_better"]
            else "MAML worse"
            if cmp["mae"]["maml_worse"]
            else "no clear difference"
        )
        rows.append(
            {
                "scenario": name,
                "users": sc["n_tasks"],
                "MAE before": methods["maml_before"]["mae"],
                "MAE after": methods["maml_after"]["mae"],
                "best baseline": LABELS[best],
                "baseline MAE": methods[best]["mae"],
                **{LABELS[m]: methods[m]["mae"] for m in SUPPORT_BASELINES if m in methods},
                "diff": cmp["mae"]["difference"],
                "diff CI": cmp["mae"]["ci"],
                "nDCG@10 after": methods["maml_after"]["ndcg@10"],
                "verdict": verdict,
            }
        )
    return rows


def summary_table(report: Report) -> str:
    """The summary as aligned plain text (the CLI prints it)."""
    extra = tuple(LABELS[m] for m in SUPPORT_BASELINES)
    head = ("scenario", "users", "MAE 0-step", "MAE adapted", *extra, "best baseline",
            "its MAE", "MAML − best [95% CI]", "verdict")  # fmt: skip
    lines = [head]
    for r in summary_rows(report):
        diff = f"{r['diff']:+.3f} [{r['diff CI'][0]:+.3f}, {r['diff CI'][1]:+.3f}]"
        cells = tuple(f"{r[c]:.3f}" if c in r else "-" for c in extra)
        lines.append((r["scenario"], str(r["users"]), f"{r['MAE before']:.3f}",
                      f"{r['MAE after']:.3f}", *cells, r["best baseline"],
                      f"{r['baseline MAE']:.3f}", diff, r["verdict"]))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


def method_table(report: Report, scenario: str) -> str:
    """Markdown table of every method's figures (with 95% CIs) in one scenario."""
    methods = report.scenarios[scenario]["methods"]
    cols = ["mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10"]
    out = ["| method | " + " | ".join(c.upper() if "@" not in c else f"nDCG{c[4:]}" for c in cols)
           + " | MAE all | RMSE all |", "|---" * (len(cols) + 3) + "|"]  # fmt: skip
    for m in METHODS:
        f = methods[m]
        cells = [_ci(f[c], f[f"{c}_ci"]) for c in cols]
        out.append(
            f"| {LABELS[m]} | "
            + " | ".join(cells)
            + f" | {f['mae_all']:.3f} | {f['rmse_all']:.3f} |"
        )
    return "\n".join(out)


def _adaptation_text(adapt: dict[str, Any]) -> str:
    """What the inner loop is, in the model's real terms (its meta-training order)."""
    trained = adapt.get("trained_first_order")
    order = ("" if trained is None else
             f", meta-trained {'first' if trained else 'second'}-order (evaluation adapts"
             " without a meta-gradient, which gives the same adapted weights)")  # fmt: skip
    return (f"Adaptation: {adapt['steps']} inner steps, lr {adapt['lr']}, fast group"
            f" `{adapt['fast_params']}`{order}.")  # fmt: skip


def to_markdown(report: Report) -> str:
    """report.md: verdict, summary, baselines, then per scenario the method table, curves
    and comparison, then the top-N section."""
    meta = report.meta
    parts = [
        f"# Evaluation of {meta.get('model') or 'a model'} on {meta['dataset']}",
        "",
        verdict(report),
        "",
        f"Seed {meta['seed']}; 95% CIs from {meta['n_boot']} bootstrap resamples of the users"
        " (paired across methods). Headline: per-user MAE (each user counts equally); MAE/RMSE"
        " all = over all query ratings. nDCG ranks each user's query items by predicted score"
        " (gain 2^rating − 1, ties averaged). " + _adaptation_text(meta["adaptation"]),
        "",
        "## Summary",
        "",
        *summary_markdown(report),
        "## Fitted baselines",
        "",
        *baselines_table(meta["baselines"]),
    ]
    for name, sc in report.scenarios.items():
        cmp = sc["comparison"]
        sizes = sc["support_curve"]["sizes"]
        parts += [
            f"## {name} ({sc['n_tasks']} users, {sc['n_query_ratings']} query ratings,"
            f" mean support {sc['mean_support']:.1f})",
            "",
            *identical_note(sc),
            method_table(report, name),
            "",
            f"MAML adapted − {LABELS[cmp['baseline']]} (per user, paired): MAE"
            f" {_ci(cmp['mae']['difference'], cmp['mae']['ci'])}, nDCG@10"
            f" {_ci(cmp['ndcg@10']['difference'], cmp['ndcg@10']['ci'])}.",
            "",
            "| MAE with n support ratings | " + " | ".join(str(s) for s in sizes) + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        for key in (k for k in CURVES if k in sc["support_curve"]):
            cells = [f"{p['mae']:.3f}" for p in sc["support_curve"][key]]
            parts.append(
                f"| {LABELS[key if key != 'maml' else 'maml_after']} | " + " | ".join(cells) + " |"
            )
        parts.append("")
    if report.topn is not None:
        parts += [*topn_markdown(report.topn), f"![{TOPN_PLOT}]({TOPN_PLOT})", ""]
    parts += ["Plots: " + ", ".join(f"![{p}]({p})" for p in PLOTS), ""]
    return "\n".join(parts)


def legend_below(fig: Figure, rows: int = 1) -> None:
    """One legend for the figure (every panel's entries once), below the panels: it never
    covers bars or lines."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(name, handle)
    handles, labels = list(entries.values()), list(entries)
    ncol = min(len(labels), 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    lines = -(-len(labels) // max(ncol, 1))
    fig.tight_layout(rect=(0, min(0.45, 0.07 * lines / rows + 0.02), 1, 0.95))


def plot_methods(report: Report, metrics: tuple[str, ...] = ("mae", "ndcg@10")) -> Figure:
    """Bars with 95% CIs: each metric per scenario per method."""
    names = list(report.scenarios)
    fig = Figure(figsize=(6 * len(metrics), 4.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    width = 0.8 / len(METHODS)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, m in enumerate(METHODS):
            vals = [report.scenarios[n]["methods"][m][metric] for n in names]
            cis = [report.scenarios[n]["methods"][m][f"{metric}_ci"] for n in names]
            err = [[v - c[0] for v, c in zip(vals, cis, strict=True)],
                   [c[1] - v for v, c in zip(vals, cis, strict=True)]]  # fmt: skip
            xs = [i + (j - len(METHODS) / 2 + 0.5) * width for i in range(len(names))]
            ax.bar(xs, vals, width, yerr=err, label=LABELS[m], capsize=2, color=METHOD_COLORS[m])
        ax.set_xticks(range(len(names)), names)
        title = metric.upper() if metric == "mae" else f"nDCG{metric[4:]}"
        ax.set_ylabel(title)
        ax.set_title(f"{title} per scenario and method (95% CI)", fontsize=10)
        low = min(report.scenarios[n]["methods"][m][metric] for n in names for m in METHODS)
        ax.set_ylim(bottom=max(0.0, low - 0.15))
    legend_below(fig)
    return fig


def _curves(report: Report, key: str, xlabel: str, title: str) -> Figure:
    names = list(report.scenarios)
    fig = Figure(figsize=(4 * len(names), 4.2))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sc = report.scenarios[name]
        curve = sc[key]
        same = {b: a for a, b in identical_methods(sc)}
        xs = curve["steps"] if key == "steps_curve" else curve["sizes"]
        for method in (m for m in CURVES if m in curve):
            ys = curve[method]["mae"] if key == "steps_curve" else [p["mae"] for p in curve[method]]
            color = METHOD_COLORS["maml_after" if method == "maml" else method]
            label, style = ("MAML" if method == "maml" else LABELS[method]), ("-", "o")
            if method in same:  # drawn dotted over its twin, named as equal
                label, style = f"{label} (= {LABELS[same[method]]} here)", (":", "x")
            ax.plot(xs, ys, ls=style[0], marker=style[1], label=label, color=color)
        flat = ("item_mean", "pooled") + (SUPPORT_BASELINES if key == "steps_curve" else ())
        for m in (m for m in flat if m in sc["methods"]):
            ax.axhline(sc["methods"][m]["mae"], ls="--", lw=1, color=METHOD_COLORS[m],
                       label=LABELS[m])  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MAE")
    fig.suptitle(title)
    legend_below(fig)
    return fig


def plot_steps(report: Report) -> Figure:
    """MAE of the query ratings against the number of inner steps, per scenario."""
    return _curves(report, "steps_curve", "inner steps", "Query MAE after n inner steps")


def plot_support(report: Report) -> Figure:
    """MAE against the support size (ratings the user gave), per scenario."""
    fig = _curves(
        report, "support_curve", "support ratings", "Query MAE with n support ratings per user"
    )
    for ax, name in zip(fig.axes, report.scenarios, strict=False):
        ax.set_xscale("log")
        sizes = report.scenarios[name]["support_curve"]["sizes"]
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_report(report: Report, out: Path | str) -> Path:
    """Write report.json, report.md and the plots to ``out`` atomically; returns ``out``."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        (tmp / "report.md").write_text(to_markdown(report))
        for name, draw in zip(PLOTS, (plot_methods, plot_steps, plot_support), strict=True):
            (tmp / name).write_bytes(figure_png(draw(report)))
        if report.topn is not None:
            (tmp / TOPN_PLOT).write_bytes(figure_png(plot_topn(report.topn)))
    return out
