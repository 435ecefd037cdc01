"""The text of an evaluation report that people read first: the verdict, the summary and
the fitted baselines as Markdown tables, and notes on methods that coincide.

``identical_methods`` finds methods whose figures are all equal in a scenario (on new items
the shrunk item mean *is* the global mean, and MF + fold-in *is* μ + b_i + b_u: both have
nothing item-specific to learn), so the report says so instead of hiding one curve under
the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from melu.evaluation.topn_report import topn_verdict

if TYPE_CHECKING:
    from melu.evaluation.evaluate import Report

BASELINE_SETTINGS = {
    "global_mean": "global mean μ",
    "item_mean_shrinkage": "item mean: shrinkage",
    "pooled_best_epoch": "pooled network: best epoch",
    "finetune_lr": "pooled + fine-tune: inner lr",
    "finetune_steps": "pooled + fine-tune: inner steps",
    "bias_item_shrinkage": "μ + b_i + b_u: item shrinkage",
    "bias_user_shrinkage": "μ + b_i + b_u: user shrinkage",
    "mf_rank": "MF: rank",
    "mf_reg": "MF: factor regularisation",
    "mf_bias_reg": "MF: bias regularisation",
    "rating_baselines_fit_on": "fit on",
}


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def baselines_table(baselines: dict[str, Any]) -> list[str]:
    """The fitted baselines' settings as a two-column Markdown table."""
    rows = [f"| {BASELINE_SETTINGS.get(k, k)} | {_value(v)} |" for k, v in baselines.items()]
    return ["| baseline setting | value |", "|---|---|", *rows, ""]


def summary_markdown(report: Report) -> list[str]:
    """The per-scenario summary (MAML vs the best baseline by MAE) as a Markdown table."""
    from melu.evaluation.report import summary_rows

    head = ("scenario", "users", "MAE 0-step", "MAE adapted", "best baseline", "its MAE",
            "MAML − best [95% CI]", "nDCG@10 adapted", "verdict")  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in summary_rows(report):
        diff = f"{r['diff']:+.3f} [{r['diff CI'][0]:+.3f}, {r['diff CI'][1]:+.3f}]"
        cells = (r["scenario"], str(r["users"]), f"{r['MAE before']:.3f}",
                 f"{r['MAE after']:.3f}", r["best baseline"], f"{r['baseline MAE']:.3f}", diff,
                 f"{r['nDCG@10 after']:.3f}", r["verdict"])  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def _figures(value: Any) -> list[float]:
    """Every number in a method's figures (CIs included), in a fixed order."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _figures(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _figures(v)]
    return [float(value)] if isinstance(value, int | float) else []


def identical_methods(scenario: dict[str, Any]) -> list[tuple[str, str]]:
    """Pairs of methods whose every figure (and support curve, if any) is equal."""
    methods, curve = scenario["methods"], scenario.get("support_curve", {})
    names = list(methods)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fa, fb = _figures(methods[a]), _figures(methods[b])
            if (a in curve) != (b in curve):
                continue
            if a in curve:
                fa, fb = fa + _figures(curve[a]), fb + _figures(curve[b])
            if len(fa) == len(fb) and all(abs(x - y) < 1e-12 for x, y in zip(fa, fb, strict=True)):
                pairs.append((a, b))
    return pairs


def identical_note(scenario: dict[str, Any]) -> list[str]:
    from melu.evaluation.report import LABELS

    pairs = identical_methods(scenario)
    if not pairs:
        return []
    text = "; ".join(f"{LABELS[a]} = {LABELS[b]}" for a, b in pairs)
    return [f"Note: identical predictions here ({text}): on items with no training ratings"
            " they have nothing item-specific to learn, so their rows and curves coincide.",
            ""]  # fmt: skip


def verdict(report: Report) -> str:
    """One paragraph: MAML against the best baseline by MAE per scenario, then top-N."""
    from melu.evaluation.report import summary_rows

    rows = summary_rows(report)
    better = [r["scenario"] for r in rows if r["verdict"] == "MAML better"]
    worse = [r["scenario"] for r in rows if r["verdict"] == "MAML worse"]
    text = (f"**Verdict.** Rating error (per-user MAE, paired 95% CI against the best baseline"
            f" of each scenario): MAML is better in {len(better)} of {len(rows)} scenarios"
            f" ({', '.join(better) or 'none'}) and worse in {len(worse)}"
            f" ({', '.join(worse) or 'none'}).")  # fmt: skip
    if report.topn is not None:
        text += " " + topn_verdict(report.topn)
    return text
