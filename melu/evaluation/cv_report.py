"""A pooled K-fold study (``melu.evaluation.cv``) as report.json, report.md and plots.

The plots: ``melu.evaluation.report``'s method bars with CIs, ``diffs.png`` (the paired
model − baseline differences) and ``support_curve.png`` (``plot_support_curves``: every
method's MAE at each fixed support size, with CI bands). ``pooled_frame``, ``diff_frame``
and ``support_frame`` give the same figures as DataFrames (the notebook shows them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from melu.atomic import atomic_directory
from melu.evaluation.evaluate import BASELINES, METHODS, Report
from melu.evaluation.report import (
    CURVES,
    LABELS,
    METHOD_COLORS,
    TOPN_PLOT,
    figure_png,
    legend_below,
    plot_methods,
)
from melu.evaluation.report_tables import identical_methods, identical_note
from melu.evaluation.topn_report import plot_topn, topn_markdown, topn_verdict

PLOTS = ("methods.png", "diffs.png", "support_curve.png")
FLAT = ("global_mean", "item_mean", "pooled")  # baselines that never see the user's support


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
        *identical_note(sc),
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


def summary_markdown(report: Report) -> list[str]:
    """The pooled summary as a Markdown table: one row per scenario."""
    head = ("scenario", "users", "MAML", *(LABELS[b] for b in BASELINES), "best",
            "MAML − best [95% CI]", "verdict")  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, sc in report.scenarios.items():
        best, m = sc["best_baseline"], sc["methods"]
        cmp = sc["comparison"][best]
        cells = (name, str(sc["n_users"]), f"{m['maml_after']['mae']:.3f}",
                 *(f"{m[b]['mae']:.3f}" for b in BASELINES), LABELS[best],
                 _signed(cmp["difference"], cmp["ci"]), _verdict(cmp))  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def verdict(report: Report) -> str:
    """One paragraph: pooled MAE against the best baseline per scenario, then top-N."""
    verdicts = {n: _verdict(sc["comparison"][sc["best_baseline"]])
                for n, sc in report.scenarios.items()}  # fmt: skip
    better = [n for n, v in verdicts.items() if v == "MAML better"]
    worse = [n for n, v in verdicts.items() if v == "MAML worse"]
    text = (f"**Verdict.** Pooled per-user MAE against the best baseline of each scenario"
            f" (paired 95% CI): MAML is better in {len(better)} of {len(verdicts)} scenarios"
            f" ({', '.join(better) or 'none'}) and worse in {len(worse)}"
            f" ({', '.join(worse) or 'none'}).")  # fmt: skip
    return text + (" " + topn_verdict(report.topn) if report.topn is not None else "")


def to_markdown(report: Report) -> str:
    meta = report.meta
    parts = [
        f"# K-fold study on {meta['dataset']}: {meta['folds']} folds × seeds {meta['seeds']}",
        "",
        verdict(report),
        "",
        "Random user folds with disjoint test users (every user a test user once); model and"
        " baselines refit on each fold's training users, settings picked on its validation"
        " users. Per-user query MAE, each user averaged over seeds and folds first (so each"
        f" user counts once); 95% CIs from {meta['n_boot']} bootstrap resamples of the users,"
        " paired across methods. Best epochs per run: " + str(meta["best_epochs"]) + ".",
        "",
        *summary_markdown(report),
    ]
    for name, sc in report.scenarios.items():
        parts += scenario_markdown(name, sc)
    plots = list(PLOTS)
    if report.topn is not None:
        parts += topn_markdown(report.topn)
        plots.append(TOPN_PLOT)
    parts += ["Plots: " + ", ".join(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(parts)


def _curve_label(key: str) -> str:
    return LABELS["maml_after" if key == "maml" else key]


def pooled_frame(report: Report) -> pd.DataFrame:
    """Pooled per-user MAE: one row per scenario (users, fold × seed runs, then every
    method's MAE in ``METHODS`` order, columns named by ``LABELS``, then the best baseline)."""
    rows = {}
    for name, sc in report.scenarios.items():
        maes = {LABELS[m]: sc["methods"][m]["mae"] for m in METHODS if m in sc["methods"]}
        rows[name] = {"users": sc["n_users"], "runs": sc["n_runs"], **maes,
                      "best baseline": LABELS[sc["best_baseline"]]}  # fmt: skip
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "scenario"
    return frame


def diff_frame(report: Report) -> pd.DataFrame:
    """Paired per-user differences MAML adapted − baseline with their 95% CIs: one row per
    (scenario, baseline); negative means MAML is better."""
    rows = {}
    for name, sc in report.scenarios.items():
        for base in (b for b in BASELINES if b in sc["comparison"]):
            cmp = sc["comparison"][base]
            rows[(name, LABELS[base])] = {"MAML − baseline": cmp["difference"],
                                          "CI low": cmp["ci"][0], "CI high": cmp["ci"][1],
                                          "verdict": _verdict(cmp)}  # fmt: skip
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["scenario", "baseline"])
    return frame


def support_frame(report: Report) -> pd.DataFrame:
    """MAE with n support ratings: one row per (scenario, method), one column per n.

    Rows: MAML adapted and the baselines with a support curve (pooled + fine-tune,
    μ + b_i + b_u, MF + fold-in), then the baselines that ignore the support (global mean,
    item mean, pooled), whose pooled MAE is the same at every n. A single ``melu evaluate``
    report works too (same curve and method figures)."""
    rows = {}
    for name, sc in report.scenarios.items():
        curve = sc["support_curve"]
        for key in (k for k in CURVES if k in curve):
            rows[(name, _curve_label(key))] = [p["mae"] for p in curve[key]]
        for m in (m for m in FLAT if m in sc["methods"]):
            rows[(name, LABELS[m])] = [sc["methods"][m]["mae"]] * len(curve["sizes"])
    sizes = next(iter(report.scenarios.values()))["support_curve"]["sizes"]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=pd.Index(sizes, name="n"))
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["scenario", "method"])
    return frame


def plot_support_curves(report: Report) -> Figure:
    """Per scenario, MAE against the number of support ratings (log axis): MAML adapted and
    each support-using baseline with its 95% CI band, dashed lines for the baselines that
    ignore the support (a K-fold study or a single ``melu evaluate`` report)."""
    names = list(report.scenarios)
    fig = Figure(figsize=(4 * len(names), 3.8))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        sc = report.scenarios[name]
        curve, sizes = sc["support_curve"], sc["support_curve"]["sizes"]
        same = {b: a for a, b in identical_methods(sc)}
        for key in (k for k in CURVES if k in curve):
            color = METHOD_COLORS["maml_after" if key == "maml" else key]
            ys = [p["mae"] for p in curve[key]]
            name_, style = _curve_label(key), ("-", "o")
            if key in same:  # drawn dotted over its twin, named as equal
                name_, style = f"{name_} (= {LABELS[same[key]]} here)", (":", "x")
            ax.plot(sizes, ys, ls=style[0], marker=style[1], color=color, label=name_)
            ax.fill_between(sizes, [p["mae_ci"][0] for p in curve[key]],
                            [p["mae_ci"][1] for p in curve[key]], color=color, alpha=0.15,
                            lw=0)  # fmt: skip
        for m in (m for m in FLAT if m in sc["methods"]):
            ax.axhline(sc["methods"][m]["mae"], ls="--", lw=1, color=METHOD_COLORS[m],
                       label=LABELS[m])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_title(f"{name} ({sc.get('n_users', sc.get('n_tasks'))} users)")
        ax.set_xlabel("support ratings")
        ax.set_ylabel("MAE")
    fig.suptitle("Pooled query MAE with n support ratings per user (95% CI bands)")
    legend_below(fig)
    return fig


def plot_diffs(report: Report) -> Figure:
    """Paired MAML − baseline MAE differences with 95% CIs, per scenario and baseline."""
    names = list(report.scenarios)
    fig = Figure(figsize=(7, 4.8))
    ax = fig.subplots()
    width = 0.8 / len(BASELINES)
    for j, base in enumerate(BASELINES):
        cmps = [report.scenarios[n]["comparison"][base] for n in names]
        vals = [c["difference"] for c in cmps]
        err = [[v - c["ci"][0] for v, c in zip(vals, cmps, strict=True)],
               [c["ci"][1] - v for v, c in zip(vals, cmps, strict=True)]]  # fmt: skip
        xs = [i + (j - len(BASELINES) / 2 + 0.5) * width for i in range(len(names))]
        ax.bar(xs, vals, width, yerr=err, label=LABELS[base], capsize=2,
               color=METHOD_COLORS[base])  # fmt: skip
    ax.axhline(0.0, color="k", lw=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("MAML adapted − baseline (MAE)")
    ax.set_title("Paired per-user MAE differences, MAML − baseline (95% CI; < 0: MAML better)",
                 fontsize=10)  # fmt: skip
    legend_below(fig)
    return fig


def write_cv_report(report: Report, out: Path | str) -> Path:
    """report.json, report.md and the plots in the folder ``out`` (written atomically)."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        (tmp / "report.md").write_text(to_markdown(report))
        (tmp / "methods.png").write_bytes(figure_png(plot_methods(report, ("mae",))))
        (tmp / "diffs.png").write_bytes(figure_png(plot_diffs(report)))
        (tmp / "support_curve.png").write_bytes(figure_png(plot_support_curves(report)))
        if report.topn is not None:
            (tmp / TOPN_PLOT).write_bytes(figure_png(plot_topn(report.topn)))
    return out
