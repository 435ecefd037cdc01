"""The top-N figures (``melu.evaluation.topn_eval``) as Markdown tables, a verdict and a plot.

Shared by ``melu evaluate``'s report.md and ``melu cv``'s: both hold the same ``topn`` data
(a K-fold study pools it per user over the folds). ``topn_markdown`` gives the section,
``topn_verdict`` one sentence for the verdict at the top, ``plot_topn`` Recall@10 and
NDCG@10 against the support size per method with 95% CI bands.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from matplotlib.figure import Figure

from melu.evaluation.topn_eval import MODEL

TOPN_LABELS = {
    MODEL: "melu (adapted)",
    "popularity": "popularity",
    "item_knn": "item-kNN",
    "user_knn": "user-kNN",
    "ease": "EASE^R",
    "ease_liked": "EASE^R, liked target",
    "rp3beta": "RP³β",
    "implicit_als": "implicit ALS",
    "baseline_predictor": "μ + b_i + b_u",
    "mf_fold_in": "MF + fold-in",
}
STAT_LABELS = {
    "coverage": "catalog coverage",
    "popularity": "mean training popularity",
    "overlap_no_ratings": "overlap with the no-ratings list",
    "overlap_pairwise": "pairwise overlap",
}
PLOT_METRICS = ("recall@10", "ndcg@10")
CANDIDATE_TEXT = {"all": "all candidates", "seen": "only items seen in training"}


def label(name: str) -> str:
    return TOPN_LABELS.get(name, name)


def metric_label(metric: str) -> str:
    name, k = metric.split("@")
    return {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision"}[name] + f"@{k}"


def _ci(value: float, ci: list[float], signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{value:{f}} [{ci[0]:{f}}, {ci[1]:{f}}]"


def settings(topn: dict[str, Any]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(scenario, candidates, points per n) of every setting with users."""
    for scenario, by_cand in topn["scenarios"].items():
        for cand, points in by_cand.items():
            if points:
                yield scenario, cand, points


def identical(points: list[dict[str, Any]], rankers: list[str]) -> list[list[str]]:
    """Groups of two or more rankers whose every figure is the same at every n (one curve
    hides the others), each group in ``rankers``' order."""
    metrics = [m for m in points[0]["methods"][rankers[0]] if not m.endswith("_ci")]

    def same(a: str, b: str) -> bool:
        return all(
            abs(p["methods"][a][m] - p["methods"][b][m]) < 1e-12 for p in points for m in metrics
        )

    groups: list[list[str]] = []
    for r in rankers:
        group = next((g for g in groups if same(g[0], r)), None)
        if group is None:
            groups.append([r])
        else:
            group.append(r)
    return [g for g in groups if len(g) > 1]


def _names(rankers: list[str]) -> str:
    """'a and b', 'a; b and c' (labels may hold commas)."""
    names = [label(r) for r in rankers]
    return f"{'; '.join(names[:-1])} and {names[-1]}"


def _metric_table(points: list[dict[str, Any]], rankers: list[str], metric: str) -> list[str]:
    with_ci = metric.endswith("@10")
    out = [f"| {metric_label(metric)} | " + " | ".join(f"n = {p['n']}" for p in points) + " |",
           "|---" * (len(points) + 1) + "|"]  # fmt: skip
    for r in rankers:
        cells = [_ci(p["methods"][r][metric], p["methods"][r][f"{metric}_ci"]) if with_ci
                 else f"{p['methods'][r][metric]:.3f}" for p in points]  # fmt: skip
        name = f"**{label(r)}**" if r == MODEL else label(r)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _verdict_cell(cmp: dict[str, Any]) -> str:
    return "melu better" if cmp["model_better"] else "melu worse" if cmp["model_worse"] else "tie"


def _diff_table(points: list[dict[str, Any]], rankers: list[str]) -> list[str]:
    """melu − each baseline (Recall@10, NDCG@10) per n, paired per-user 95% CIs."""
    cols = [p for p in points if p["comparison"]]
    if not cols:
        return []
    out = ["| melu − baseline | " + " | ".join(f"n = {p['n']}" for p in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    for base in (r for r in rankers if r != MODEL):
        for m in PLOT_METRICS:
            cells = []
            for p in cols:
                c = p["comparison"][base][m]
                star = " ★" if p["best_baseline"] == base else ""
                cells.append(f"{_ci(c['difference'], c['ci'], True)} {_verdict_cell(c)}{star}")
            out.append(f"| {label(base)}, {metric_label(m)} | " + " | ".join(cells) + " |")
    return [*out, "", "★: the best baseline at that n (highest Recall@10).", ""]


def _stats_table(points: list[dict[str, Any]], rankers: list[str], k: int) -> list[str]:
    point = next((p for p in points if p["n"] == 5), points[len(points) // 2])
    stats = [s for s in STAT_LABELS if s in point["methods"][rankers[0]]]
    out = [f"Top-{k} lists at n = {point['n']} ({point['n_candidates']} candidates):", "",
           "| method | " + " | ".join(STAT_LABELS[s] for s in stats) + " |",
           "|---" * (len(stats) + 1) + "|"]  # fmt: skip
    for r in rankers:
        f = point["methods"][r]
        cells = [f"{f[s]:.1f}" if s == "popularity" else f"{100 * f[s]:.1f}%" for s in stats]
        out.append(f"| {label(r)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def topn_markdown(topn: dict[str, Any], level: str = "##") -> list[str]:
    """The top-N section: protocol, baseline settings, then per setting the tables."""
    p = topn["protocol"]
    parts = [
        f"{level} Full-catalog top-N for new users",
        "",
        f"Each test user's support is a seeded random n of their ratings in the scenario's items"
        f" (nested across n; n = 0: no ratings, the prior from their features); every other"
        f" rating is held out, *relevant* = held-out rating ≥ {p['threshold']:g}; each method"
        f" ranks every candidate (the support removed). Users with ≥ {p['min_ratings']}"
        f" ratings, ≥ {p['min_heldout']} held out and ≥ 1 relevant. Recall@k = hits / relevant,"
        " NDCG@k with binary gain (ideal over min(k, relevant)), Precision@k = hits / k; 95%"
        " CIs by bootstrap over users, paired across methods. Every method is fit on the same"
        " training ratings; settings are picked on validation users with this protocol.",
        "",
    ]
    if topn.get("settings"):
        parts += ["| baseline setting | value |", "|---|---|"]
        parts += [f"| {k} | {v} |" for k, v in topn["settings"].items()]
        parts.append("")
    rankers = topn["rankers"]
    for scenario, cand, points in settings(topn):
        users = ", ".join(f"{q['n_users']}" for q in points)
        parts += [f"{level}# {scenario}, {CANDIDATE_TEXT[cand]} (users per n: {users})", ""]
        for group in identical(points, rankers):
            who = "every method ranks" if len(group) == len(rankers) else f"{_names(group)} rank"
            parts += [f"Note: {who} identically here (every figure equal at every n); their"
                      " rows and curves coincide.", ""]  # fmt: skip
        for metric in (m for m in points[0]["methods"][rankers[0]] if "@" in m and "_ci" not in m):
            parts += _metric_table(points, rankers, metric)
        parts += _diff_table(points, rankers)
        parts += _stats_table(points, rankers, topn["k_lists"])
    return parts


def topn_verdict(topn: dict[str, Any]) -> str:
    """One sentence per headline setting: melu against its best baseline at each n ≥ 1."""
    out = []
    for scenario, cand, points in settings(topn):
        if cand != "all":
            continue
        cells, wins, losses = [], 0, 0
        for p in (q for q in points if q["n"] > 0 and q["comparison"]):
            c = p["comparison"][p["best_baseline"]]["recall@10"]
            wins, losses = wins + c["model_better"], losses + c["model_worse"]
            cells.append(f"n = {p['n']}: {_ci(c['difference'], c['ci'], True)}"
                         f" vs {label(p['best_baseline'])}")  # fmt: skip
        if cells:
            ties = len(cells) - wins - losses
            out.append(f"Top-N on {scenario} (Recall@10 against the best top-N baseline at each"
                       f" support size n ≥ 1): melu better at {wins}, worse at {losses}, no clear"
                       f" difference at {ties} of {len(cells)} sizes (melu − best, paired 95% CI:"
                       f" {'; '.join(cells)}).")  # fmt: skip
    return " ".join(out)


def plot_topn(topn: dict[str, Any]) -> Figure:
    """Recall@10 and NDCG@10 vs support size, per setting (rows) and metric (columns), one
    line per method with its 95% CI band; the legend sits below the panels."""
    rows = list(settings(topn))
    fig = Figure(figsize=(10, 3.4 * max(len(rows), 1) + 0.8))
    axes = fig.subplots(max(len(rows), 1), len(PLOT_METRICS), squeeze=False)
    colors = {r: f"C{i}" for i, r in enumerate(topn["rankers"])}
    for row, (scenario, cand, points) in zip(axes, rows, strict=False):
        xs = list(range(len(points)))
        for ax, metric in zip(row, PLOT_METRICS, strict=True):
            for r in topn["rankers"]:
                ys = [p["methods"][r][metric] for p in points]
                lo = [p["methods"][r][f"{metric}_ci"][0] for p in points]
                hi = [p["methods"][r][f"{metric}_ci"][1] for p in points]
                model = r == MODEL
                ax.plot(xs, ys, marker="o", color=colors[r], label=label(r), lw=2.5 if model else 1.2,
                        ls="-" if model else "--")  # fmt: skip
                ax.fill_between(xs, lo, hi, color=colors[r], alpha=0.12, lw=0)
            ax.set_xticks(xs, [str(p["n"]) for p in points])
            ax.set_xlabel("support ratings n")
            ax.set_ylabel(metric_label(metric))
            ax.set_title(f"{metric_label(metric)}: {scenario}, {CANDIDATE_TEXT[cand]}", fontsize=10)
    fig.suptitle("Full-catalog top-N for new users (95% CI bands)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9)
    fig.tight_layout(rect=(0, 0.08 * 3 / (3 + len(rows)), 1, 0.97))
    return fig
