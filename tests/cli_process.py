"""Run ``python -m melu`` as a real process with this checkout on PYTHONPATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def melu(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``melu ARGS`` in a fresh interpreter (one torch thread), output captured."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "melu", *args],
        capture_output=True, text=True, env=full, timeout=timeout, check=False,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single ``error:`` line of a failed run with exit ``code`` (no traceback;
    progress bars drawn before it on stderr are left out)."""
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], err[-2000:])
    lines = [
        line[line.index("error: ") :] for line in re.split(r"[\r\n]", err) if "error: " in line
    ]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
