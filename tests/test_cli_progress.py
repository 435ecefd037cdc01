"""Progress output: one plain line per epoch or phase in a log, a bar only on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from heads import CHEAP_HEAD_FLAGS

from melu.cli.progress import Steps, is_terminal
from melu.prepare import Prepared

EPOCH_LINE = re.compile(r"^epoch +\d+  loss ")


def melu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``melu ARGS`` as a child process with stdout and stderr piped (not a terminal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "melu", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


def test_piped_train_logs_one_line_per_epoch_and_no_bar_frames(
    ml100k: Prepared, data_dir: Path, tmp_path: Path
) -> None:
    assert ml100k.path is not None  # the session's task cache: not built again
    common = ("--dataset", "ml-100k", "--data-dir", str(data_dir), "--cache-dir",
              str(ml100k.path.parent), "--epochs", "2", "--max-tasks-per-epoch", "32",
              "--patience", "5", "--device", "cpu", *CHEAP_HEAD_FLAGS)  # fmt: skip
    done = melu("train", *common, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "\r" not in done.stderr
    epochs = [line for line in done.stdout.splitlines() if EPOCH_LINE.match(line)]
    assert [line.split()[1] for line in epochs] == ["1", "2"]
    assert len(done.stdout) + len(done.stderr) < 2000  # a few lines, not kilobytes of frames

    quiet = melu("train", *common, "--out", str(tmp_path / "quiet"), "--no-progress", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(EPOCH_LINE.match(line) for line in quiet.stdout.splitlines())
    assert "using cached tasks" not in quiet.stdout
    assert quiet.stderr == "" and "model bundle:" in quiet.stdout  # the summary stays


def test_steps_are_lines_in_a_log_and_a_bar_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Steps(3, "evaluate") as steps:
        for name in ("warm", "user_cold", "item_cold"):
            steps.update(1, name)
    logged = capsys.readouterr().err
    assert logged.splitlines() == ["evaluate 1/3: warm", "evaluate 2/3: user_cold",
                                   "evaluate 3/3: item_cold"]  # fmt: skip

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert is_terminal()
        with Steps(3, "evaluate") as steps:
            for name in ("warm", "user_cold", "item_cold"):
                steps.update(1, name)
        terminal.flush()
        monkeypatch.undo()
    chunks = []
    while True:  # everything written before the terminal closed, then EIO (Linux) or b""
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    drawn = b"".join(chunks).decode()
    assert "\r" in drawn and "3/3" in drawn  # tqdm redraws one line in place
    assert not is_terminal(open(os.devnull, "w"))  # noqa: SIM115
