"""Output paths (issue 16, classes 7 and 11): a full disk is one line naming the path and
"no space left on device" with nothing half-written left; an existing file where a
command writes its folder is refused (exit 2) and never touched. Real ``melu`` processes
on a real small tmpfs (skipped where this process may not mount one)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_process import melu, one_line
from heads import CHEAP_HEAD_FLAGS

from melu.atomic import atomic_directory, write_text_atomic
from melu.cli.app import run_app
from melu.errors import StorageError
from melu.prepare import Prepared
from melu.training.checkpoint import load_checkpoint


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` bytes (e.g. "256k"), unmounted afterwards."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder, request.param)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


@pytest.mark.parametrize("small_disk", ["256k"], indirect=True)
def test_melu_prepare_on_a_full_disk_is_one_line_and_leaves_nothing(
    small_disk: Path, data_dir: Path
) -> None:
    done = melu("prepare", "--data-dir", str(data_dir), "--out", str(small_disk / "cache"))
    error = one_line(done, 1)
    assert f"{small_disk / 'cache'}" in error and "no space left on device" in error, error
    assert files_under(small_disk) == []


@pytest.mark.parametrize("small_disk", ["256k"], indirect=True)
def test_melu_train_on_a_full_disk_is_one_line_and_leaves_nothing(
    small_disk: Path, data_dir: Path, ml100k: Prepared
) -> None:
    assert ml100k.path is not None
    out = small_disk / "run"
    done = melu(
        "train", "--data-dir", str(data_dir), "--cache-dir", str(ml100k.path.parent),
        "--out", str(out), "--epochs", "1", "--max-tasks-per-epoch", "32",
    )  # fmt: skip
    error = one_line(done, 1)
    assert f"{out / 'checkpoint'}: no space left on device" in error, error
    assert files_under(small_disk) == []


@pytest.mark.parametrize("small_disk", ["1400k"], indirect=True)  # the checkpoint fits
def test_a_model_that_does_not_fit_leaves_the_whole_checkpoint_only(
    small_disk: Path, data_dir: Path, ml100k: Prepared, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ml100k.path is not None
    out = small_disk / "run"
    argv = ["train", "--data-dir", str(data_dir), "--cache-dir", str(ml100k.path.parent)]
    argv += ["--epochs", "1", "--max-tasks-per-epoch", "32", *CHEAP_HEAD_FLAGS]
    assert run_app([*argv, "--out", str(out)]) == 1
    assert f"{out / 'model'}: no space left on device" in capsys.readouterr().err
    whole = ["run/checkpoint/state.json", "run/checkpoint/tensors.safetensors"]
    assert [f for f in files_under(small_disk) if not f.endswith("metrics.jsonl")] == whole
    load_checkpoint(out / "checkpoint")  # whole: --resume can go on from it


@pytest.mark.parametrize("small_disk", ["64k"], indirect=True)
def test_library_writes_on_a_full_disk_raise_storage_error_and_clean_up(
    small_disk: Path,
) -> None:
    with pytest.raises(StorageError, match=r"metrics\.jsonl: no space left on device"):
        write_text_atomic(small_disk / "metrics.jsonl", "x" * 200_000)
    full = pytest.raises(StorageError, match=r"folder: no space left on device")
    with full, atomic_directory(small_disk / "folder") as tmp:
        (tmp / "big").write_bytes(os.urandom(200_000))
    assert files_under(small_disk) == [] and [p.name for p in small_disk.iterdir()] == []


@pytest.fixture(scope="module")
def bundle(untrained_bundle: Path) -> Path:
    return untrained_bundle


def test_evaluate_out_an_existing_file_is_refused_and_untouched(
    bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "report"
    target.write_text("my notes\n")
    done = melu(
        "evaluate", "--model", str(bundle), "--data-dir", str(data_dir), "--out", str(target)
    )
    assert "exists and is not a folder" in one_line(done, 2)
    assert target.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize(
    "command", [["train", "--epochs", "1"], ["prepare"], ["cv", "--folds", "2"]]
)
def test_every_command_refuses_an_existing_file_as_out(
    command: list[str], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "report"
    target.write_text("my notes\n")
    assert run_app([*command, "--data-dir", str(data_dir), "--out", str(target)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_the_library_never_replaces_a_file_with_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "eval"
    target.write_text("keep")
    with pytest.raises(StorageError, match="exists and is not a folder"), atomic_directory(target):
        pass
    assert target.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
