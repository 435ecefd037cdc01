"""Strict parsing of MovieLens text files.

Every malformed row is an error naming ``file:line`` and the offending text; a rating
off the format's scale is an error too (never silently dropped).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from melu.errors import DataError

SEP = "\x1f"  # single-byte stand-in for "::" so pandas' C parser can read ml-1m
ID_MAX = 2**31 - 1  # ids are stored as int32: larger ones would silently wrap around
INTEGER = r"-?[0-9]+"  # an int field's text: plain digits (pandas alone takes 1e3, 1.0, +5, " 5")
_INTEGER = re.compile(INTEGER)
_LOOSE = re.compile(r"[eE.+ ]")  # in a token pandas would still read as an integer


def _field_ok(part: str, dtype: str) -> bool:
    """Whether ``part`` is a finite number of ``dtype`` (int fields: plain digits in range)."""
    try:
        if dtype.startswith("int"):
            if not _INTEGER.fullmatch(part):
                return False
            value = int(part)
            bits = int(dtype[3:] or 64)
            return -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
        return math.isfinite(float(part))
    except ValueError:
        return False


def first_bad_line(path: Path, text: str, check: Callable[[str], bool]) -> DataError:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not check(line):
            shown = line.replace(SEP, "::")[:200]
            return DataError(f"{path}:{number}: malformed row: {shown!r}")
    return DataError(f"{path}: could not be parsed")


def _ok_row(sep: str, names: list[str], dtypes: dict[str, str]) -> Callable[[str], bool]:
    """The strict check of one row: ``len(names)`` fields, numbers where ``dtypes`` says."""

    def ok(line: str) -> bool:
        parts = line.split(sep)
        if len(parts) != len(names):
            return False
        return all(
            _field_ok(part, dtypes[name])
            for part, name in zip(parts, names, strict=True)
            if dtypes.get(name, "str").startswith(("int", "float"))
        )

    return ok


def read_table(
    path: Path, text: str, sep: str, names: list[str], dtypes: dict[str, str], header: bool = False
) -> pd.DataFrame:
    """Parse ``text`` strictly: every row has ``len(names)`` fields of the given dtypes
    (int fields plain digits: ``1e3`` or a short row is a ``file:line`` error, not a value);
    an empty file is an error naming it."""
    if not text.strip():
        raise DataError(f"{path}: empty file (no rows)")
    ok = _ok_row(sep, names, dtypes)
    ints = [n for n in names if dtypes.get(n, "str").startswith("int")]
    if _numbers_only(names, dtypes) and _LOOSE.search(text) is None:
        ints = []  # pandas' own int parsing is strict enough here (the fast path)
    as_read = {n: (str if n in ints else t) for n, t in dtypes.items()}
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, names=names, header=0 if header else None,
            dtype=as_read, quoting=3 if sep != "," else 0, keep_default_na=False,
            na_values=[], engine="c",
        )  # fmt: skip
        if len(frame.columns) != len(names) or not _whole_rows(text, frame, sep, header):
            raise ValueError("a row has too few fields")
        for name in ints:
            if not frame[name].str.fullmatch(INTEGER).all():
                raise ValueError(f"{name} is not an integer")
            frame[name] = frame[name].astype(dtypes[name])
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        raise _bad_line(path, text, ok, header) from exc
    floats = [n for n in names if dtypes.get(n, "str").startswith("float")]
    if floats and not np.isfinite(frame[floats].to_numpy(dtype=np.float64)).all():
        raise first_bad_line(path, text, ok)
    return frame


def _numbers_only(names: list[str], dtypes: dict[str, str]) -> bool:
    return all(dtypes.get(n, "str").startswith(("int", "float")) for n in names)


def _whole_rows(text: str, frame: pd.DataFrame, sep: str, header: bool) -> bool:
    """Whether every row had all its fields: without quoting, the separators in ``text``
    number (fields - 1) per row (pandas fills a short row's last fields with '')."""
    if sep == "," or len(sep) != 1:
        return not frame.isna().any().any()
    return text.count(sep) == (len(frame) + int(header)) * (len(frame.columns) - 1)


def _bad_line(path: Path, text: str, ok: Callable[[str], bool], header: bool) -> DataError:
    """The ``file:line`` error of the first malformed row (line numbers count a header)."""
    body = text.split("\n", 1)[1] if header else text
    error = first_bad_line(path, body, ok)
    if header and error.args[0].startswith(f"{path}:"):
        line_no, rest = error.args[0][len(str(path)) + 1 :].split(":", 1)
        error = DataError(f"{path}:{int(line_no) + 1}:{rest}")
    return error


def check_values(
    frame: pd.DataFrame,
    path: Path,
    column: str,
    *,
    low: float = 0,
    high: float = ID_MAX,
    unique: bool = False,
    header: int = 0,
) -> None:
    """Error naming ``path:line`` of the first value of ``column`` outside ``low..high``
    (ids: 0..2³¹−1, as stored) or, with ``unique``, the first repeat of an earlier value."""
    values = frame[column].to_numpy()
    bad = (values < low) | (values > high)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}:{row + 1 + header}: {column} {values[row]} is outside {low:.0f}..{high:.0f}"
        )
    repeated = pd.Series(values).duplicated().to_numpy() if unique else bad
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataError(f"{path}:{row + 1 + header}: {column} {values[row]} appears twice")


def read_text(path: Path, encoding: str) -> str:
    """The file's text. A latin-1 format (ml-100k, ml-1m) saved as UTF-8 by some tool is
    read as UTF-8: bytes that decode as UTF-8 and are not plain ASCII are almost never
    latin-1 text (it would need "Ã©"-like pairs), while reading them as latin-1 silently
    garbles every accented title."""
    try:
        raw = path.read_bytes()
        if encoding == "latin-1" and not raw.isascii():
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start})"
        ) from exc


def check_ratings(
    frame: pd.DataFrame, path: Path, low: float, high: float, step: float, header: int = 0
) -> None:
    """Error naming ``path:line`` of the first rating off the scale (``header`` lines skipped)."""
    values = frame["rating"].to_numpy()
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    bad |= np.abs(values / step - np.round(values / step)) > 1e-6
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}:{row + 1 + header}: rating {float(values[row]):g} is outside the scale "
            f"{low:g}..{high:g} in steps of {step:g}"
        )


def line_error(path: Path, text: str, dtypes: list[str]) -> DataError:
    """The first row of a headed CSV whose fields are not numbers of ``dtypes``."""
    for number, line in enumerate(text.splitlines()[1:], start=2):
        parts = line.split(",")
        if len(parts) != len(dtypes) or not all(map(_field_ok, parts, dtypes)):
            return DataError(f"{path}:{number}: malformed row: {line[:200]!r}")
    return DataError(f"{path}: could not be parsed")


def split_list(values: pd.Series, sep: str) -> list[list[str]]:
    return [
        [] if v in ("", "N/A") else [s.strip() for s in v.split(sep) if s.strip()] for v in values
    ]
