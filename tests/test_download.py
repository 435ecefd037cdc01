"""Download against a zip served by a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_process import melu, one_line

from melu.data.download import (
    download_dataset,
    ensure_dataset,
    git_blob_id,
    is_present,
    resolve_url_base,
)
from melu.data.movielens import load_movielens
from melu.errors import DataError

ML100K_FILES = ("u.data", "u.user", "u.item", "u.genre", "u.occupation", "u.info")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def publish(www: Path, name: str, files: dict[str, bytes], md5: str | None = None) -> None:
    """Write ``www/name.zip`` (files under ``name/``) and its GroupLens-style ``.md5``."""
    archive = www / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr(f"{name}/{rel}", data)
    digest = md5 or hashlib.md5(archive.read_bytes()).hexdigest()
    (www / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {digest}\n")


def real_ml100k(data_dir: Path) -> dict[str, bytes]:
    return {f: (data_dir / "ml-100k" / f).read_bytes() for f in ML100K_FILES}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_and_unpacks(server, data_dir: Path, tmp_path: Path) -> None:
    base, www = server
    publish(www, "ml-100k", real_ml100k(data_dir))
    target = tmp_path / "data"
    seen: list[tuple[int, int | None]] = []
    folder = download_dataset(
        "ml-100k", target, url_base=base, progress=lambda d, t: seen.append((d, t))
    )
    assert folder == target / "ml-100k" and leftovers(target) == ["ml-100k"]
    assert len(load_movielens("ml-100k", target).ratings) == 100_000
    size = (www / "ml-100k.zip").stat().st_size
    assert seen[-1] == (size, size)
    (www / "ml-100k.zip").unlink()  # present: nothing is fetched again
    assert ensure_dataset("ml-100k", target, url_base=base) == folder


def test_bad_md5_leaves_nothing(server, data_dir: Path, tmp_path: Path) -> None:
    base, www = server
    publish(www, "ml-100k", real_ml100k(data_dir), md5="0" * 32)
    with pytest.raises(
        DataError, match=r"ml-100k\.zip: md5 mismatch: got [0-9a-f]{32}, published 0{32}"
    ):
        download_dataset("ml-100k", tmp_path / "data", url_base=base)
    assert leftovers(tmp_path / "data") == []


def test_sha256_mismatch_names_the_file(server, data_dir: Path, tmp_path: Path) -> None:
    base, www = server
    files = real_ml100k(data_dir)
    files["u.user"] = files["u.user"].replace(b"|M|", b"|F|", 1)
    publish(www, "ml-100k", files)  # the zip's md5 is right; the content is not the original
    with pytest.raises(DataError, match=r"ml-100k/u\.user: sha256 mismatch"):
        download_dataset("ml-100k", tmp_path / "data", url_base=base)
    assert leftovers(tmp_path / "data") == []


def test_env_url_base_csv_family_and_errors(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, www = server
    monkeypatch.setenv("MELU_DOWNLOAD_URL", base + "/")
    assert resolve_url_base() == base
    publish(
        www,
        "ml-latest-small",
        {
            "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.5,10\n",
            "movies.csv": b"movieId,title,genres\n1,Heat (1995),Crime\n",
        },
    )
    folder = ensure_dataset("ml-latest-small", tmp_path / "data")
    assert is_present("ml-latest-small", tmp_path / "data")
    assert (folder / "ratings.csv").read_bytes().endswith(b"4.5,10\n")
    with pytest.raises(DataError, match=r"ml-25m\.zip\.md5: HTTP 404"):
        download_dataset("ml-25m", tmp_path / "data")
    publish(www, "ml-32m", {"movies.csv": b"movieId,title,genres\n"})
    with pytest.raises(DataError, match=r"ml-32m: the archive has no ratings\.csv"):
        download_dataset("ml-32m", tmp_path / "data")
    (www / "ml-1m.zip").write_bytes(b"this is not a zip")
    (www / "ml-1m.zip.md5").write_text(hashlib.md5(b"this is not a zip").hexdigest())
    with pytest.raises(DataError, match="not a valid zip"):
        download_dataset("ml-1m", tmp_path / "data")
    assert leftovers(tmp_path / "data") == ["ml-latest-small"]


def test_unsafe_member_path_is_refused(server, tmp_path: Path) -> None:
    base, www = server
    archive = www / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.csv", b"x")
    (www / "ml-latest-small.zip.md5").write_text(hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="unsafe path"):
        download_dataset("ml-latest-small", tmp_path / "data", url_base=base)
    assert not (tmp_path / "evil.csv").exists() and leftovers(tmp_path / "data") == []


def test_git_blob_id_matches_the_published_blob(data_dir: Path) -> None:
    assert (
        git_blob_id(data_dir / "ml-100k" / "u.data") == "16ef21ed827cae1a3f71e89e23cffb5a8f44baae"
    )


class _Dribble(_Quiet):
    """Answers ``.md5`` at once, then the zip one byte every 0.2 s (``/stall``: never)."""

    def do_GET(self) -> None:
        if self.path.endswith(".md5"):
            body = b"MD5 (ml-100k.zip) = " + b"0" * 32 + b"\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(200):
                if "/stall/" not in self.path:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                time.sleep(0.2)


@pytest.fixture
def dribbling() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Dribble)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("path", "needle"),
    [("", "not complete within the 2 s deadline"), ("/stall", "stalled, no data for 1 s")],
)
def test_a_dribbling_or_stalled_server_is_one_line_naming_the_url(
    dribbling: str, tmp_path: Path, path: str, needle: str
) -> None:
    url = dribbling + path
    start = time.monotonic()
    done = melu(
        "data", "download", "ml-100k", "--data-dir", str(tmp_path), "--url-base", url,
        "--timeout", "2", "--stall-timeout", "1", timeout=60,
    )  # fmt: skip
    error = one_line(done, 1)
    assert f"download failed: {url}/ml-100k.zip: {needle}" in error, error
    assert time.monotonic() - start < 40 and leftovers(tmp_path) == []
