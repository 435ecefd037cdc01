"""``melu data download|list`` and ``melu prepare`` end to end, through ``run_app``."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from melu.cli import run_app

SCENARIO_ORDER = ["train", "validation", "warm", "user_cold", "item_cold", "user_item_cold"]


def test_prepare_prints_the_table_in_order(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prepare", "--data-dir", str(data_dir), "--out", str(tmp_path)]
    assert run_app([*args, "--query-order", "time", "--user-split", "random", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "dropped rows: duplicate ratings 0, ratings of unknown items 0" in out
    header = next(line for line in out.splitlines() if line.startswith("scenario"))
    assert header.split() == [
        "scenario",
        "users",
        "tasks",
        "sup",
        "median",
        "max",
        "items",
        "ratings",
    ]
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in SCENARIO_ORDER
    ]
    assert [r[0] for r in rows] == SCENARIO_ORDER
    assert all(int(r[3]) >= 3 and int(r[5]) <= 90 for r in rows)
    assert run_app([*args, "--query-order", "time", "--user-split", "random", "--seed", "3"]) == 0
    assert "using cached tasks" in capsys.readouterr().out


def test_prepare_exit_codes(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_app(["prepare", "--user-split", "weekly"]) == 2
    assert run_app(["prepare", "--dataset", "ml-5m"]) == 2
    assert run_app(["prepare", "--query-size", "0", "--data-dir", str(data_dir)]) == 2
    capsys.readouterr()
    assert run_app(["prepare", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    assert "melu data download ml-100k" in capsys.readouterr().err
    root = tmp_path / "ml-100k"
    root.mkdir()
    for name in ("u.user", "u.item"):
        (root / name).symlink_to(data_dir / "ml-100k" / name)
    (root / "u.data").write_text("1\t1\t5\t881250949\n2\t1\t9\t881250949\n")
    assert run_app(["prepare", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "u.data:2: rating 9" in err and "Traceback" not in err


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_data_download_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.5,10\n")
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,Heat (1995),Crime\n")
    (www / "ml-latest-small.zip.md5").write_text(hashlib.md5(archive.read_bytes()).hexdigest())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        data = str(tmp_path / "data")
        args = ["data", "download", "ml-latest-small", "--data-dir", data, "--url-base", base]
        assert run_app(args) == 0
        assert "verified and unpacked" in capsys.readouterr().out
        assert run_app(args) == 0
        assert "already in" in capsys.readouterr().out
        assert run_app(["data", "download", "ml-25m", "--data-dir", data, "--url-base", base]) == 1
        assert "HTTP 404" in capsys.readouterr().err
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert run_app(["data", "download", "ml-7m"]) == 2
    assert run_app(["data", "list", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "ml-latest-small  present" in out and "ml-25m           missing" in out
