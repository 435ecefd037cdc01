"""Run a notebook top to bottom with nbclient and write the executed copy.

``python notebooks/execute.py NOTEBOOK OUT`` (what ``make notebook`` runs): the notebook
executes in its own folder (so its relative defaults resolve as in Jupyter), reads the
reports named by ``MELU_REPORT`` / ``MELU_CV_REPORT`` when set, and fails with the failing
cell's error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python notebooks/execute.py NOTEBOOK OUT", file=sys.stderr)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(source.resolve().parent)}},
    )
    client.execute()
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out)
    print(f"executed {source} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
