"""Evaluation on a small real ML-100K run: the curves, the report files, the refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from eval_fixtures import tiny_report, tiny_run

from melu.bundle import load_bundle
from melu.cli.app import run_app
from melu.cli.evaluate import resolve_model
from melu.errors import BundleError, DataError
from melu.evaluation.evaluate import BASELINES, METHODS, Report, evaluate
from melu.evaluation.metrics import user_mae
from melu.evaluation.report import PLOTS, TOPN_PLOT, write_report
from melu.model.maml import adapt, task_examples
from melu.model.predict import predict_queries
from melu.prepare import Prepared
from melu.tasks import EVAL_SCENARIOS


@pytest.fixture(scope="module")
def run_dir(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(ml100k, tmp_path_factory)


@pytest.fixture(scope="module")
def report(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return tiny_report(ml100k, tmp_path_factory)


def test_curve_equals_separate_adaptations_and_the_per_task_loop(
    ml100k: Prepared, run_dir: Path
) -> None:
    bundle = load_bundle(run_dir / "model")
    tasks = ml100k.tasks["user_cold"].select(slice(0, 6))
    lr = bundle.config.meta.inner_lr
    curve = predict_queries(
        bundle.model, bundle.params, tasks, ml100k.tables, steps=[3, 0, 1], lr=lr, chunk=4
    )
    for i, n in enumerate([3, 0, 1]):
        one = predict_queries(bundle.model, bundle.params, tasks, ml100k.tables, steps=n, lr=lr)
        torch.testing.assert_close(curve[i], one, rtol=1e-4, atol=1e-5)
    support, query = task_examples(tasks, ml100k.tables)
    for t in range(len(tasks)):  # the reference: one task at a time through adapt
        s = type(support)(
            {k: v[t] for k, v in support.inputs.items()}, support.ratings[t], support.mask[t]
        )
        params, _ = adapt(bundle.model, bundle.params, s, steps=3, lr=lr, first_order=True)
        ref = bundle.model.predict(params, {k: v[t] for k, v in query.inputs.items()})
        torch.testing.assert_close(curve[0, t], ref.detach(), rtol=1e-4, atol=1e-5)


def test_report_covers_every_scenario_and_method(report: Report, ml100k: Prepared) -> None:
    assert list(report.scenarios) == list(EVAL_SCENARIOS)
    steps = report.meta["adaptation"]["steps"]
    for name, sc in report.scenarios.items():
        tasks = ml100k.tasks[name]
        assert sc["n_tasks"] == len(tasks)
        assert sc["n_query_ratings"] == int(tasks.query_mask.sum())
        assert set(sc["methods"]) == set(METHODS)
        for figures in sc["methods"].values():
            lo, hi = figures["mae_ci"]
            assert lo <= figures["mae"] <= hi
            assert 0 < figures["ndcg@10"] <= 1
        curve = sc["steps_curve"]
        assert curve["maml"]["mae"][curve["steps"].index(0)] == pytest.approx(
            sc["methods"]["maml_before"]["mae"]
        )
        assert curve["maml"]["mae"][curve["steps"].index(steps)] == pytest.approx(
            sc["methods"]["maml_after"]["mae"]
        )
        curves = ("maml", "pooled_finetune", "baseline_predictor", "mf")
        assert [len(sc["support_curve"][k]) for k in curves] == [2, 2, 2, 2]
        mu = report.meta["baselines"]["global_mean"]
        direct = user_mae(
            torch.full(tasks.query_ratings.shape, mu), tasks.query_ratings, tasks.query_mask
        )
        assert sc["methods"]["global_mean"]["mae"] == pytest.approx(float(direct.mean()), rel=1e-5)
        cmp = sc["comparison"]
        best = min(BASELINES, key=lambda m: sc["methods"][m]["mae"])
        assert cmp["baseline"] == best
        assert cmp["mae"]["difference"] == pytest.approx(
            sc["methods"]["maml_after"]["mae"] - sc["methods"][best]["mae"], abs=1e-9
        )


def test_the_top_n_tables_rank_by_the_rating_baselines_of_the_rating_tables(
    report: Report,
) -> None:
    """One fit of μ + b_i + b_u and MF serves both tables: the top-N rankers built on them
    carry the settings the rating tables report (MF's grid here is one point, not the
    default grid the top-N study would pick from on its own)."""
    fitted, topn = report.meta["baselines"], report.topn
    assert topn is not None
    mf = topn["settings"]["mf_fold_in"]["chosen"]
    assert (mf["rank"], mf["reg"]) == (fitted["mf_rank"], fitted["mf_reg"]) == (4, 5.0)
    bias = topn["settings"]["baseline_predictor"]["chosen"]
    assert bias["user_shrinkage"] == fitted["bias_user_shrinkage"]


def test_adaptation_lowers_the_error_of_the_initialisation(report: Report) -> None:
    for sc in report.scenarios.values():
        assert sc["methods"]["maml_after"]["mae"] < sc["methods"]["maml_before"]["mae"]


def test_written_report_round_trips(report: Report, tmp_path: Path) -> None:
    out = write_report(report, tmp_path / "eval")
    files = ["report.json", "report.md", *PLOTS, TOPN_PLOT]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert Report.load(out).to_dict() == json.loads(json.dumps(report.to_dict()))
    text = (out / "report.md").read_text()
    for name in EVAL_SCENARIOS:
        assert f"## {name}" in text
    # read by people: a verdict first, tables rather than code blocks or JSON dumps
    assert text.split("\n")[2].startswith("**Verdict.**")
    assert "```" not in text and '{"' not in text
    assert "| baseline setting | value |" in text and "| scenario | users |" in text
    order = "first" if report.meta["config"]["meta"]["first_order"] else "second"
    assert f"meta-trained {order}-order" in text
    for name in ("item_cold", "user_item_cold"):  # new items: item mean = global mean
        section = text.split(f"## {name} (")[1].split("\n## ")[0]
        assert "Note: identical predictions here (global mean = item mean (shrunk)" in section
    assert (out / "methods.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temp folder left behind


def test_refuses_data_of_another_protocol_or_files(ml100k: Prepared, run_dir: Path) -> None:
    bundle = load_bundle(run_dir / "model")
    other = dataclasses.replace(ml100k, config=ml100k.config.replace(query_size=5, min_ratings=15))
    with pytest.raises(BundleError, match="query_size"):
        evaluate(bundle, other)
    other = dataclasses.replace(ml100k, fingerprint="0" * 64)
    with pytest.raises(BundleError, match="fingerprint"):
        evaluate(bundle, other)


def test_refuses_a_scenario_without_tasks(ml100k: Prepared, run_dir: Path) -> None:
    bundle = load_bundle(run_dir / "model")
    tasks = {**ml100k.tasks, "item_cold": ml100k.tasks["item_cold"].select(slice(0, 0))}
    with pytest.raises(DataError, match="item_cold"):
        evaluate(bundle, dataclasses.replace(ml100k, tasks=tasks))


def test_resolve_model_accepts_the_run_or_its_model_folder(run_dir: Path) -> None:
    assert resolve_model(run_dir) == (run_dir / "model", run_dir)
    assert resolve_model(run_dir / "model") == (run_dir / "model", run_dir)


def test_cli_errors_leave_nothing_behind(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = run_app(["evaluate", "--model", str(tmp_path / "none"), "--out", str(out)])
    assert code == 1
    assert "no model bundle" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (run_dir / "model").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "weights.safetensors").write_bytes(b"not a tensor file")
    assert run_app(["evaluate", "--model", str(broken), "--out", str(out)]) == 1
    assert "weights.safetensors" in capsys.readouterr().err
    code = run_app(["evaluate", "--model", str(run_dir), "--data-dir", str(tmp_path / "nodata"),
                    "--out", str(out)])  # fmt: skip
    assert code == 1
    assert "not found" in capsys.readouterr().err
    assert not out.exists()


def test_cli_rejects_unknown_scenarios(tmp_path: Path, capsys) -> None:
    assert run_app(["evaluate", "--model", str(tmp_path), "--scenarios", "warm,train"]) == 2
    assert "train" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_evaluate_writes_the_top_n_tables(run_dir: Path, tmp_path: Path, capsys) -> None:
    """``melu evaluate`` end to end (one scenario to keep it short): the top-N section with
    every ranker's tables, the paired differences, the list statistics and the plot."""
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(run_dir), "--out", str(out), "--scenarios", "user_cold",
            "--no-progress"]  # fmt: skip
    assert run_app(args) == 0
    text = (out / "report.md").read_text()
    section = text.split("## Full-catalog top-N for new users")[1]
    assert "### user_cold, all candidates" in section
    assert "### user_cold, only items seen in training" in section
    assert "user_item_cold" not in section  # only the scenarios asked for
    for head in ("| Recall@10 | n = 0 | n = 1 | n = 3 | n = 5 | n = 10 | n = 20 |",
                 "| NDCG@10 |", "| Precision@20 |", "| melu − baseline |",
                 "| method | catalog coverage | mean training popularity |"):  # fmt: skip
        assert head in section
    assert "| **melu (adapted)** |" in section and "| popularity |" in section
    assert (out / TOPN_PLOT).read_bytes()[:4] == b"\x89PNG"
    report = Report.load(out)
    assert report.topn is not None and list(report.topn["scenarios"]) == ["user_cold"]
    assert "Top-N on user_cold" in capsys.readouterr().out
