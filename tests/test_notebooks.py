"""Every notebook runs top to bottom (nbclient) against a report of a small model trained here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from eval_fixtures import tiny_report, tiny_run
from nbclient import NotebookClient

from melu.evaluation.report import write_report
from melu.prepare import Prepared

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def report_dir(ml100k: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("notebooks")
    report = tiny_report(ml100k, tiny_run(ml100k, root).parent)
    return write_report(report, root / "eval")


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/*.ipynb missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(
    path: Path, report_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MELU_REPORT", str(report_dir / "report.json"))
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
    assert len(images) >= 3  # the three plots
    text = "".join(o.get("text", "") for o in outputs)
    assert "data set: ml-100k" in text
