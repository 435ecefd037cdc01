"""Download MovieLens from GroupLens, verify it, and unpack it atomically.

``download_dataset("ml-100k", data_dir)`` fetches ``<url_base>/ml-100k.zip`` and the
``ml-100k.zip.md5`` GroupLens publishes beside it, checks the zip's MD5, unpacks it into a
temporary folder inside ``data_dir``, checks every extracted file listed in
``melu/data/manifest.json`` (SHA-256, or git blob id where only that is known), and only
then renames the folder to ``data_dir/ml-100k``. Any failure, a checksum mismatch or an
interrupt removes the temporary folder: nothing half-extracted is ever left behind.

Two clocks bound a download: no byte for ``stall_s`` seconds, or no complete answer
within ``deadline_s`` seconds overall (a server that dribbles a byte every few seconds
never stalls), is a ``DataError`` naming the URL.

The base URL is ``url_base`` if given, else ``$MELU_DOWNLOAD_URL``, else GroupLens. The
library never prints: progress is reported through a ``(bytes_done, bytes_total)`` callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from melu.data.movielens import DATASETS, dataset_dir
from melu.errors import DataError

ByteProgress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)
MANIFEST = Path(__file__).with_name("manifest.json")
_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")
_CHUNK = 1 << 20


@cache
def manifest() -> dict[str, Any]:
    """The packaged download manifest (URL base, required files and checksums per data set)."""
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def resolve_url_base(url_base: str | None = None) -> str:
    """``url_base``, else ``$MELU_DOWNLOAD_URL``, else the GroupLens address."""
    base = url_base or os.environ.get("MELU_DOWNLOAD_URL") or manifest()["url_base"]
    return base.rstrip("/")


def _entry(name: str) -> dict[str, Any]:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return manifest()["datasets"][name]


def required_files(name: str) -> list[str]:
    """The files a reader of ``name`` needs (e.g. ``u.data``, ``u.user``, ``u.item``)."""
    return list(_entry(name)["required"])


def is_present(name: str, data_dir: Path | str) -> bool:
    """True when ``data_dir/name`` holds every required file."""
    root = dataset_dir(name, Path(data_dir))
    return all((root / f).is_file() for f in required_files(name))


class _Clock:
    """The two bounds of a download: ``stall_s`` without a byte, ``deadline_s`` overall."""

    def __init__(self, deadline_s: float, stall_s: float) -> None:
        self.deadline_s, self.stall_s = deadline_s, stall_s
        self.end = time.monotonic() + deadline_s

    def check(self, url: str, done: int) -> None:
        if time.monotonic() > self.end:
            raise DataError(
                f"download failed: {url}: not complete within the {self.deadline_s:g} s "
                f"deadline ({done} bytes so far; a stalled or very slow server)"
            )


def _read(response: Any, url: str, clock: _Clock, done: int, size: int = _CHUNK) -> bytes:
    """At most ``size`` bytes, as soon as some arrive (``read1``: a dribbling server cannot
    hold one call for long); a stall past ``clock.stall_s`` or the deadline is a DataError."""
    clock.check(url, done)
    try:
        block: bytes = response.read1(size)
    except TimeoutError as exc:
        raise DataError(
            f"download failed: {url}: stalled, no data for {clock.stall_s:g} s after {done} bytes"
        ) from exc
    except OSError as exc:
        raise DataError(f"download failed: {url}: interrupted after {done} bytes") from exc
    clock.check(url, done + len(block))
    return block


def _open(url: str, clock: _Clock) -> Any:
    try:  # http(s) only: checked by the caller; the timeout bounds every socket wait
        return urllib.request.urlopen(url, timeout=min(clock.stall_s, clock.deadline_s))
    except urllib.error.HTTPError as exc:
        raise DataError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"download failed: {url}: {getattr(exc, 'reason', exc)}") from exc


def _published_md5(url: str, clock: _Clock) -> str:
    data = b""
    with _open(url, clock) as response:
        while len(data) < 4096 and (block := _read(response, url, clock, len(data), 4096)):
            data += block
    text = data[:4096].decode("ascii", errors="replace")
    found = _MD5.search(text)
    if not found:
        raise DataError(f"{url}: no MD5 checksum in {text[:80]!r}")
    return found.group(1).lower()


def _fetch(url: str, target: Path, progress: ByteProgress | None, clock: _Clock) -> str:
    """Stream ``url`` into ``target``; return the MD5 of the bytes written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with _open(url, clock) as response, open(target, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        if progress:
            progress(0, total)
        while block := _read(response, url, clock, done):
            out.write(block)
            md5.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    if total is not None and done != total:
        raise DataError(f"download failed: {url}: got {done} of {total} bytes")
    return md5.hexdigest()


def _extract(archive: Path, into: Path, name: str) -> Path:
    """Unpack ``archive`` (refusing unsafe member paths); return the data set's folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                    raise DataError(f"{archive.name}: unsafe path {member!r} in the archive")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive.name}: not a valid zip archive ({exc})") from exc
    if (into / name).is_dir():
        return into / name
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def git_blob_id(path: Path) -> str:
    """``git hash-object path``: sha1 of ``b"blob <size>\\0"`` + the file's bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    return _digest_into(h, path)


def sha256_file(path: Path) -> str:
    return _digest_into(hashlib.sha256(), path)


def _digest_into(h: Any, path: Path) -> str:
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_files(name: str, root: Path) -> None:
    """Check ``root`` against the manifest: required files present, checksums equal."""
    entry = _entry(name)
    for rel in entry["required"]:
        if not (root / rel).is_file():
            raise DataError(f"{name}: the archive has no {rel}")
    checks = [(rel, want, "sha256", sha256_file) for rel, want in entry.get("sha256", {}).items()]
    checks += [
        (rel, want, "git blob", git_blob_id) for rel, want in entry.get("git_blob", {}).items()
    ]
    for rel, want, kind, digest in checks:
        path = root / rel
        if not path.is_file():
            raise DataError(f"{name}/{rel}: missing from the archive ({kind} {want} expected)")
        got = digest(path)
        if got != want:
            raise DataError(f"{name}/{rel}: {kind} mismatch: got {got}, expected {want}")


def download_dataset(
    name: str,
    data_dir: Path | str,
    *,
    url_base: str | None = None,
    progress: ByteProgress | None = None,
    force: bool = False,
    deadline_s: float = 3600.0,
    stall_s: float = 60.0,
) -> Path:
    """Download, verify and unpack ``name`` into ``data_dir/name``; return that folder.

    An existing complete folder is kept unless ``force``. Raises ``DataError`` naming the
    URL or the file whose checksum does not match, or when the answer stalls for
    ``stall_s`` seconds or is not complete within ``deadline_s`` (both requests together);
    nothing is left behind on failure.
    """
    if not (0 < deadline_s < float("inf") and 0 < stall_s < float("inf")):
        raise DataError(f"download timeouts must be positive seconds ({deadline_s}, {stall_s})")
    clock = _Clock(deadline_s, stall_s)
    _entry(name)
    data_dir = Path(data_dir)
    target = dataset_dir(name, data_dir)
    if is_present(name, data_dir) and not force:
        return target
    base = resolve_url_base(url_base)
    if not base.startswith(("http://", "https://")):
        raise DataError(f"download URL must be http(s), got {base!r}")
    url = f"{base}/{name}.zip"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.download.", dir=data_dir))
    try:
        want = _published_md5(url + ".md5", clock)
        got = _fetch(url, tmp / f"{name}.zip", progress, clock)
        if got != want:
            raise DataError(f"{url}: md5 mismatch: got {got}, published {want} ({url}.md5)")
        folder = _extract(tmp / f"{name}.zip", tmp / "unpacked", name)
        verify_files(name, folder)
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_dataset(
    name: str,
    data_dir: Path | str,
    progress: ByteProgress | None = None,
    *,
    url_base: str | None = None,
) -> Path:
    """``data_dir/name``, downloading it first when any required file is missing."""
    if is_present(name, data_dir):
        return dataset_dir(name, Path(data_dir))
    return download_dataset(name, data_dir, url_base=url_base, progress=progress)
