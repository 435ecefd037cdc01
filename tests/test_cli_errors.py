"""Every CLI failure is one ``error:`` line with exit 1 (data/model) or 2 (usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from melu import __version__
from melu.bundle_checks import digests_of
from melu.cli.app import run_app


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["trian"], "No such command 'trian'"),
        (["train", "--bogus"], "No such option: --bogus"),
        (["train", "--inner-lr", "-1"], "--inner-lr"),
        (["train", "--outer-lr", "inf"], "--outer-lr"),
        (["train", "--inner-steps", "1000000000"], "--inner-steps"),
        (["evaluate"], "Missing option '--model'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_app(argv) == 2
    assert needle in one_line_error(capsys)


def test_out_that_cannot_be_written_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run_app(["train", "--out", str(a_file), "--data-dir", str(tmp_path)]) == 2
    assert f"--out: {a_file}: exists and is not a folder" in one_line_error(capsys)
    under = a_file / "under"
    assert run_app(["train", "--out", str(under), "--data-dir", str(tmp_path)]) == 2
    assert f"--out: {under}: cannot write there" in one_line_error(capsys)


def test_broken_model_paths_are_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert run_app(["recommend", "--model", str(loop)]) == 1
    one_line_error(capsys)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("weights.safetensors", "catalog.parquet", "metrics.json"):
        (bundle / name).write_bytes(b"")
    (bundle / "features.json").write_bytes(b"\xff\xfe not utf-8")
    info = {"schema_version": 1, "config": {}, "digests": digests_of(bundle)}
    (bundle / "config.json").write_text(json.dumps(info))
    assert run_app(["recommend", "--model", str(bundle)]) == 1
    assert "features.json" in one_line_error(capsys)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"melu {__version__}"
