"""A pooled K-fold study (``melu.evaluation.cv``) as report.json, report.md and plots.

The plots reuse ``melu.evaluation.report``'s figures (method bars with CIs, the
fixed-support curves) plus ``diffs.png``: the paired model − baseline differences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from melu.atomic import atomic_directory
from melu.evaluation.evaluate import BASELINES, METHODS, Report
from melu.evaluation.report import LABELS, figure_png, plot_methods, plot_support

PLOTS = ("methods.png", "diffs.png", "support_curve.png")


def _ci(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _signed(value: float, ci: list[float]) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _verdict(cmp: dict[str, Any]) -> str:
    return "MAML better" if cmp["maml_better"] else "MAML worse" if cmp["maml_worse"] else "tie"


def summary_table(report: Report) -> str:
    """Plain text: per scenario, users, MAML's pooled MAE, each baseline's, and MAML − the
    best baseline with its paired CI (the CLI prints it)."""
    head = ("scenario", "users", "MAML", *(LABELS[b] for b in BASELINES), "best",
            "MAML − best [95% CI]", "verdict")  # fmt: skip
    lines = [head]
    for name, sc in report.scenarios.items():
        best, m = sc["best_baseline"], sc["methods"]
        cmp = sc["comparison"][best]
        diff = f"{cmp['difference']:+.3f} [{cmp['ci'][0]:+.3f}, {cmp['ci'][1]:+.3f}]"
        lines.append((name, str(sc["n_users"]), f"{m['maml_after']['mae']:.3f}",
                      *(f"{m[b]['mae']:.3f}" for b in BASELINES), LABELS[best], diff,
                      _verdict(cmp)))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


def scenario_markdown(name: str, sc: dict[str, Any]) -> list[str]:
    """One scenario's section: methods with pooled MAE, paired diffs, support curves."""
    parts = [
        f"## {name} ({sc['n_users']} users, {sc['n_runs']} fold × seed runs)",
        "",
        "| method | pooled MAE [95% CI] | MAML adapted − method [95% CI] | verdict |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        cmp = sc["comparison"].get(m)
        diff = _signed(cmp["difference"], cmp["ci"]) if cmp else ""
        parts.append(f"| {LABELS[m]} | {_ci(sc['methods'][m]['mae'], sc['methods'][m]['mae_ci'])}"
                     f" | {diff} | {_verdict(cmp) if cmp else ''} |")  # fmt: skip
    sizes = sc["support_curve"]["sizes"]
    parts += ["", "| MAE with n support ratings | " + " | ".join(map(str, sizes)) + " |",
              "|---" * (len(sizes) + 1) + "|"]  # fmt: skip
    for key, points in sc["support_curve"].items():
        if key != "sizes":
            label = LABELS["maml_after" if key == "maml" else key]
            parts.append(f"| {label} | " + " | ".join(_ci(p["mae"], p["mae_ci"]) for p in points)
                         + " |")  # fmt: skip
    return [*parts, ""]


def to_markdown(report: Report) -> str:
    meta = report.meta
    parts = [
        f"# K-fold study on {meta['dataset']}: {meta['folds']} folds × seeds {meta['seeds']}",
        "",
        "Random user folds with disjoint test users (every user a test user once); model and"
        " baselines refit on each fold's training users, settings picked on its validation"
        " users. Per-user query MAE, each user averaged over seeds and folds first (so each"
        f" user counts once); 95% CIs from {meta['n_boot']} bootstrap resamples of the users,"
        " paired across methods. Best epochs per run: " + str(meta["best_epochs"]) + ".",
        "",
        "```",
        summary_table(report),
        "```",
        "",
    ]
    for name, sc in report.scenarios.items():
        parts += scenario_markdown(name, sc)
    parts += ["Plots: " + ", ".join(f"![{p}]({p})" for p in PLOTS), ""]
    return "\n".join(parts)


def plot_diffs(report: Report) -> Figure:
    """Paired MAML − baseline MAE differences with 95% CIs, per scenario and baseline."""
    names = list(report.scenarios)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    width = 0.8 / len(BASELINES)
    for j, base in enumerate(BASELINES):
        cmps = [report.scenarios[n]["comparison"][base] for n in names]
        vals = [c["difference"] for c in cmps]
        err = [[v - c["ci"][0] for v, c in zip(vals, cmps, strict=True)],
               [c["ci"][1] - v for v, c in zip(vals, cmps, strict=True)]]  # fmt: skip
        xs = [i + (j - len(BASELINES) / 2 + 0.5) * width for i in range(len(names))]
        ax.bar(xs, vals, width, yerr=err, label=LABELS[base], capsize=2)
    ax.axhline(0.0, color="k", lw=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("MAML adapted − baseline (MAE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_cv_report(report: Report, out: Path | str) -> Path:
    """report.json, report.md and the plots in the folder ``out`` (written atomically)."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        (tmp / "report.md").write_text(to_markdown(report))
        (tmp / "methods.png").write_bytes(figure_png(plot_methods(report, ("mae",))))
        (tmp / "diffs.png").write_bytes(figure_png(plot_diffs(report)))
        (tmp / "support_curve.png").write_bytes(figure_png(plot_support(report)))
    return out
