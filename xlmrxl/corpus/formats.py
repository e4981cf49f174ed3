"""Corpus input formats parsed by what they are: csv / tsv records (a header, quoted fields that may span lines) and
one JSON list per ``.json`` file; ``inputs.py`` plans and reads blocks with these.

- csv / tsv: quoting as the csv module reads it (``"`` at a field's start opens a quoted field, ``""`` is a quote
  inside one; a ``"`` inside an unquoted field is text); a record ends at a newline outside a quoted field, so a
  block boundary is a byte offset found by one scan, as for jsonl. The first record is the header.
- json: the whole file is one JSON list of objects or strings (parsed once per file and process, then sliced).
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

DELIMITERS = {"csv": ",", "tsv": "\t"}
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long text is the task's to judge (truncate=True)


def _inside_after(line: bytes, inside: bool, delim: int) -> bool:
    """Whether a quoted field is still open at the end of ``line``, as the csv module reads quotes: a ``"`` opens a
    quoted field only at a field's start, ``""`` inside one is a quote, a lone ``"`` closes it."""
    if b'"' not in line:
        return inside
    field_start, i, n = not inside, 0, len(line)
    while i < n:
        c = line[i]
        if inside:
            if c == 0x22:
                if i + 1 < n and line[i + 1] == 0x22:
                    i += 2
                    continue
                inside = False
        else:
            if c == 0x22 and field_start:
                inside = True
            field_start = c == delim
        i += 1
    return inside


def records(fh: BinaryIO, fmt: str) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, raw bytes)`` of each record from the file's current position: one line each, or for csv /
    tsv the lines up to a newline outside a quoted field. An unterminated quote ends with the file."""
    delim = ord(DELIMITERS[fmt]) if fmt in DELIMITERS else None
    pos = fh.tell()
    start, parts, inside = pos, [], False
    for line in fh:
        if not parts:
            start = pos
        parts.append(line)
        pos += len(line)
        if delim is not None:
            inside = _inside_after(line, inside, delim)
        if not inside:
            yield start, b"".join(parts)
            parts = []
    if parts:
        yield start, b"".join(parts)


def record_starts(path: str, every: int, fmt: str) -> tuple[int, list[int]]:
    """Number of data rows (csv / tsv: after the header; a last line without newline counts, an empty tail does
    not) and the byte offset of every ``every``-th row's start."""
    starts, n = [], 0
    with open(path, "rb") as fh:
        recs = records(fh, fmt)
        if fmt in DELIMITERS and next(recs, None) is None:
            raise ValueError(f"input {path!r} is empty: a {fmt} input starts with a header line naming its columns")
        for pos, _ in recs:
            if n % every == 0:
                starts.append(pos)
            n += 1
    return n, starts


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw[:-1] if raw.endswith(b"\r") else raw


def parse_record(raw: bytes, fmt: str) -> tuple[list[str] | None, str | None]:
    """(fields, None) or (None, reason) for one csv / tsv record."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"row is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    text = text.removeprefix("\ufeff")
    if not text.strip("\r\n"):
        return None, "empty line"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[fmt], strict=True))
    except csv.Error as exc:
        return None, f"row is not valid {fmt} ({exc})"
    if len(rows) != 1:
        return None, f"row is not valid {fmt} (it parses as {len(rows)} rows)"
    return rows[0], None


def header(path: str, fmt: str) -> list[str]:
    """The column names of a csv / tsv file (its first record), or an error saying what is wrong."""
    with open(path, "rb") as fh:
        first = next(records(fh, fmt), (0, b""))[1]
    names, err = parse_record(first, fmt)
    if err or not names:
        raise ValueError(
            f"input {path!r} has no {fmt} header line ({err or 'empty'}); the first line must name the columns, "
            "e.g. id,text"
        )
    return names


def read_records(path: str, offset: int, rows: int, fmt: str) -> list[bytes]:
    """``rows`` raw records from byte ``offset`` (a record's start); an error if the file has fewer now."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        out = [_strip_newline(raw) for _, (_, raw) in zip(range(rows), records(fh, fmt))]
    if len(out) < rows:  # end of file before the planned rows: the file shrank since planning
        raise RuntimeError(f"input {path!r} changed while running (fewer rows than planned); rerun")
    return out


_JSON_CACHE: dict[str, Any] = {}
_JSON_LOCK = threading.Lock()


def json_rows(path: str) -> list[Any]:
    """The list a ``.json`` input holds (parsed once per process while the file is unchanged), or an error saying
    what the file holds instead."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _JSON_LOCK:
        if _JSON_CACHE.get("key") == key:
            return _JSON_CACHE["rows"]
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"input {path!r} is not valid JSON ({str(exc).splitlines()[0][:120]}); a .json input is one JSON list "
            "of objects or strings (one object per line is jsonl: name the file .jsonl)"
        ) from exc
    if not isinstance(value, list):
        raise ValueError(
            f"input {path!r} holds a JSON {type(value).__name__}, not a list; a .json input is one JSON list of "
            'objects (e.g. [{"id": "a", "text": "..."}]) or strings'
        )
    with _JSON_LOCK:
        _JSON_CACHE.update(key=key, rows=value)
    return value
