"""Every notebook runs top to bottom (nbclient) against reports built here: the evaluation of
a small model and a tiny 2-fold ``melu cv`` study."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from eval_fixtures import tiny_cv_report, tiny_report_dir
from nbclient import NotebookClient

from melu.evaluation.evaluate import METHODS
from melu.evaluation.report import LABELS
from melu.prepare import Prepared

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def report_dir(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_report_dir(ml100k, tmp_path_factory)


@pytest.fixture(scope="module")
def cv_report_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cv_report(data_dir, tmp_path_factory)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/*.ipynb missing"


def test_the_evaluation_notebook_reads_the_quickstart_report_by_default() -> None:
    """``make quickstart`` writes runs/quickstart/eval; ``make notebook`` runs the notebook on it."""
    source = (NOTEBOOKS[0].parent / "evaluation.ipynb").read_text()
    assert "../runs/quickstart/eval/report.json" in source
    makefile = (NOTEBOOKS[0].parent.parent / "Makefile").read_text()
    assert (
        "notebooks/execute.py notebooks/evaluation.ipynb $(RUN)/evaluation.executed.ipynb"
        in makefile
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(
    path: Path,
    report_dir: Path,
    cv_report_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MELU_REPORT", str(report_dir / "report.json"))
    monkeypatch.setenv("MELU_CV_REPORT", str(cv_report_dir))  # a folder: report.json inside
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # 3 plots + top-N of the evaluation, diffs and support of the cv
    markdown = "".join(
        o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
    )
    assert "**Verdict.**" in markdown and "| baseline setting | value |" in markdown
    assert "Full-catalog top-N for new users" in markdown and "| Recall@10 | n = 0 |" in markdown
    text = "".join(o.get("text", "") for o in outputs)
    assert "data set: ml-100k" in text
    assert "K-fold study on ml-100k: 2 folds" in text
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    pooled = [t for t in tables if "best baseline" in t and "runs" in t]
    assert pooled, "the K-fold section shows no pooled table"
    assert all(LABELS[m] in pooled[0] for m in METHODS)
    support = [t for t in tables if "MF + fold-in" in t and "global mean" in t and "μ + b_i" in t]
    assert len(support) >= 2  # the evaluation's and the study's fixed-support tables
