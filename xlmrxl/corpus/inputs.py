"""Corpus inputs: find the input files, cut each into blocks of at most ``rows_per_block`` rows, read one block.

- Input: a file, a directory (every ``*.parquet``, ``*.jsonl``, ``*.json``, ``*.csv``, ``*.tsv``, ``*.txt`` below
  it, sorted), a glob or a list of them. The format comes from the suffix, and each is parsed as what it is:

  - ``.parquet`` / ``.pq``: columns by name.
  - ``.jsonl`` / ``.ndjson``: one JSON object per line (columns are its keys), or one JSON string per line (the text).
  - ``.json``: one JSON list of objects or strings, as jsonl's lines (read whole: use jsonl for large inputs).
  - ``.csv`` / ``.tsv``: the first line is a header naming the columns; quoted fields may span lines.
  - ``.txt`` / ``.text`` and any other suffix: one text per line.

  Columns are chosen the same way in every format: ``text_column`` (default ``"text"``) or ``columns`` (role ->
  column) name them, and the ``id_column`` (default ``"id"``) is used when the input has it. A compressed file
  (``.gz``, ``.zst``, ...) is refused: decompress it first.
- A block never spans two files. Parquet row counts come from the footer; jsonl / csv / tsv / text files are scanned
  once for row starts (byte offsets are kept at block boundaries, so a block is read by one seek, never by
  re-reading the file).
- Keys: each file's path relative to the input root, suffix included (the file name for a single file), so
  ``a.jsonl`` and ``a.txt`` never share one; two files with one key (a list naming ``x/a.txt`` and ``y/a.txt``) are
  refused, naming both. Block names and generated ids (input without the id column, text files: ``"<key>:<row>"``,
  ``row`` the 0-based data row in that file) come from the key.
- Reading never raises for one bad row: undecodable bytes, invalid JSON, a null or non-string field, a csv row with
  the wrong number of fields become that row's error (the id is kept), so every row reaches the output.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import formats

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv", ".tsv")
TEXT_SUFFIXES = (".txt", ".text")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".7z")
KNOWN_SUFFIXES = PARQUET_SUFFIXES + JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + TEXT_SUFFIXES


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: its path, format (``parquet`` / ``jsonl`` / ``json`` / ``csv`` / ``tsv`` / ``text``) and
    stable key (for ids and names)."""

    path: str
    fmt: str
    key: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Rows ``[start, stop)`` of one input file; ``offset`` is the byte offset of row ``start`` (jsonl / text)."""

    block_id: str
    path: str
    fmt: str
    key: str
    start: int
    stop: int
    offset: int | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (None if k == "offset" and v is not None and v < 0 else v) for k, v in d.items() if k in fields}
        for k in ("start", "stop"):
            kw[k] = int(kw[k])
        if kw.get("offset") is not None:
            kw["offset"] = int(kw["offset"])
        return cls(**kw)


@dataclasses.dataclass
class BlockRows:
    """What a reader returns: ids (an arrow array from parquet, else a list of strings), the role columns, and
    per-row read errors."""

    ids: Any
    fields: dict[str, list[Any]]
    errors: list[str | None]


def _fmt(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in COMPRESSED_SUFFIXES:
        raise ValueError(
            f"input {str(path)!r} is compressed ({suffix}); decompress it first (e.g. to .jsonl, .csv or .txt)"
        )
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in CSV_SUFFIXES:
        return suffix[1:]
    return "text"


def _check_unique(files: list[InputFile]) -> None:
    seen: dict[str, str] = {}
    for f in files:
        if f.key in seen:
            raise ValueError(
                f"input files {seen[f.key]!r} and {f.path!r} share the key {f.key!r} (their block names and "
                "generated ids would collide); pass their common directory instead, or rename one"
            )
        seen[f.key] = f.path


def discover(input: str | os.PathLike | list) -> list[InputFile]:
    """The input files, sorted, each with its format and key (unique: a collision is an error naming both files);
    an error naming what was wrong when there are none."""
    if isinstance(input, (list, tuple)):
        files: list[InputFile] = []
        for one in input:
            files.extend(discover(one))
        _check_unique(files)
        return files
    text = os.fspath(input)
    p = Path(text)
    if p.is_file():
        root, paths = p.parent, [p]
    elif p.is_dir():
        root = p
        paths = sorted(
            q
            for q in p.rglob("*")
            if q.is_file() and not q.name.startswith((".", "_")) and q.suffix.lower() in KNOWN_SUFFIXES
        )
        if not paths:
            raise FileNotFoundError(
                f"input directory {text!r} holds no .parquet, .jsonl, .json, .csv, .tsv or .txt files"
            )
    elif glob.has_magic(text):
        paths = sorted(Path(q) for q in glob.glob(text, recursive=True) if Path(q).is_file())
        if not paths:
            raise FileNotFoundError(f"input glob {text!r} matches no file")
        root = Path(os.path.commonpath([str(q.parent) for q in paths]))
    else:
        raise FileNotFoundError(f"input {text!r} is not a file, a directory or a glob that matches files")
    out = []
    for q in paths:
        st = q.stat()
        key = q.relative_to(root).as_posix()
        out.append(InputFile(str(q.resolve()), _fmt(q), key, st.st_size, st.st_mtime_ns))
    _check_unique(out)
    return out


def _block_id(f: InputFile, index: int) -> str:
    """Stable, file-name-safe block name: a readable slug of the key, a hash of the key, the block index."""
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in f.key)[-40:].strip("-") or "input"
    digest = hashlib.sha256(f.key.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-{index:06d}"


def plan(files: list[InputFile], rows_per_block: int) -> list[BlockSpec]:
    """Cut every file into blocks of at most ``rows_per_block`` rows (a block never spans two files)."""
    if int(rows_per_block) < 1:
        raise ValueError(f"rows_per_block={rows_per_block!r} must be a positive integer")
    import pyarrow.parquet as pq  # optional extra (xlmrxl[corpus]): imported where it is needed

    blocks: list[BlockSpec] = []
    for f in files:
        if f.fmt == "parquet":
            try:
                n = pq.ParquetFile(f.path).metadata.num_rows
            except Exception as exc:
                raise ValueError(f"input {f.path!r} is not a readable parquet file: {exc}") from exc
            starts = [None] * ((n + rows_per_block - 1) // rows_per_block)
        elif f.fmt == "json":
            n = len(formats.json_rows(f.path))
            starts = [None] * ((n + rows_per_block - 1) // rows_per_block)
        else:
            n, starts = formats.record_starts(f.path, rows_per_block, f.fmt)
        for i, off in enumerate(starts):
            start = i * rows_per_block
            blocks.append(
                BlockSpec(_block_id(f, i), f.path, f.fmt, f.key, start, min(n, start + rows_per_block), offset=off)
            )
    seen: dict[str, str] = {}
    for b in blocks:
        if seen.setdefault(b.block_id, b.path) != b.path:
            raise ValueError(
                f"input files {seen[b.block_id]!r} and {b.path!r} get the same block name {b.block_id!r}; rename one"
            )
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# reading one block
# ---------------------------------------------------------------------------------------------------------------
def check_text(value: Any, column: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    if value is None:
        return None, f"missing value in column {column!r}"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"column {column!r} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not isinstance(value, str):
        return None, f"column {column!r} holds a {type(value).__name__}, not text"
    return value, None


def _read_parquet(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    import pyarrow.parquet as pq  # optional extra (xlmrxl[corpus])

    pf = pq.ParquetFile(spec.path)
    names = set(pf.schema_arrow.names)
    missing = sorted({c for c in columns.values() if c not in names})
    if missing:
        raise ValueError(
            f"input {spec.path!r} has no column {', '.join(map(repr, missing))} (it has {sorted(names)}); pass "
            "text_column= / columns= naming the input's columns"
        )
    wanted = sorted(set(columns.values()) | ({id_column} if id_column in names else set()))
    # read only the row groups that hold rows [start, stop), then slice: memory is one block, not one file
    groups, first, row = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row + n > spec.start and row < spec.stop:
            groups.append(g)
            first = row if first is None else first
        row += n
    table = pf.read_row_groups(groups, columns=wanted) if groups else pf.schema_arrow.empty_table().select(wanted)
    table = table.slice(spec.start - (first or 0), spec.rows)
    if id_column in names:
        ids = table.column(id_column).combine_chunks()  # kept as arrow: the output id column has the input's type
    else:
        ids = [f"{spec.key}:{spec.start + i}" for i in range(spec.rows)]
    errors: list[str | None] = [None] * spec.rows
    fields: dict[str, list[Any]] = {}
    for role, col in columns.items():
        values = []
        for i, v in enumerate(table.column(col).to_pylist()):
            text, err = check_text(v, col)
            values.append(text)
            if err and errors[i] is None:
                errors[i] = err
        fields[role] = values
    if id_column in names:
        for i, null in enumerate(ids.is_null().to_pylist()):
            if null and errors[i] is None:
                errors[i] = f"missing id in column {id_column!r}"
    return BlockRows(ids, fields, errors)


def _read_lines(spec: BlockSpec) -> list[bytes]:
    lines = []
    with open(spec.path, "rb") as fh:
        fh.seek(spec.offset or 0)
        for _ in range(spec.rows):
            line = fh.readline()
            if not line:  # end of file before the planned rows: the file shrank since planning
                raise RuntimeError(f"input {spec.path!r} changed while running (fewer lines than planned); rerun")
            lines.append(line[:-1] if line.endswith(b"\n") else line)
    if spec.start == 0 and lines and lines[0].startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is no text
        lines[0] = lines[0][3:]
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _read_text(spec: BlockSpec, columns: dict[str, str]) -> BlockRows:
    roles = list(columns)
    if roles != ["text"]:
        raise ValueError(
            f"text input {spec.path!r} has one text per line, but this task needs the columns {roles}; "
            "use a parquet, jsonl, json, csv or tsv input"
        )
    ids = [f"{spec.key}:{spec.start + i}" for i in range(spec.rows)]
    texts, errors = [], []
    for raw in _read_lines(spec):
        text, err = check_text(raw, "text")
        texts.append(text)
        errors.append(err.replace("column 'text'", "line") if err else None)
    return BlockRows(ids, {"text": texts}, errors)


def _json_row(obj: Any, gen_id: str, id_column: str, columns: dict[str, str], fields: dict, ids: list) -> str | None:
    """Append one JSON value (an object: columns by key; a string: the text) to ``ids`` / ``fields``; its error."""
    err = None
    if isinstance(obj, str):
        if list(columns) == ["text"]:
            ids.append(gen_id)
            text, err = check_text(obj, "text")
            fields["text"].append(text)
            return err
        obj, err = {}, f"a JSON string, but this task needs the columns {list(columns.values())}: write objects"
    elif not isinstance(obj, dict):
        obj, err = {}, f"not a JSON object or string (a JSON {type(obj).__name__})"
    rid = obj.get(id_column)
    ids.append(gen_id if rid is None else str(rid))  # JSON ids are written as strings
    for role, col in columns.items():
        text, ferr = (None, None) if err else check_text(obj.get(col), col)
        fields[role].append(text)
        err = err or ferr
    return err


def _read_jsonl(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    ids: list[Any] = []
    fields: dict[str, list[Any]] = {role: [] for role in columns}
    errors: list[str | None] = []
    for i, raw in enumerate(_read_lines(spec)):
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            obj = ValueError(f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        except ValueError as exc:
            obj = ValueError(f"line is not a JSON object or string ({str(exc).splitlines()[0][:80]})")
        err = _json_row(
            {} if isinstance(obj, ValueError) else obj, f"{spec.key}:{spec.start + i}", id_column, columns, fields, ids
        )
        errors.append(str(obj) if isinstance(obj, ValueError) else err)
    return BlockRows(ids, fields, errors)


def _read_json(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    ids: list[Any] = []
    fields: dict[str, list[Any]] = {role: [] for role in columns}
    errors: list[str | None] = []
    rows = formats.json_rows(spec.path)
    if len(rows) < spec.stop:
        raise RuntimeError(f"input {spec.path!r} changed while running (fewer rows than planned); rerun")
    for i in range(spec.start, spec.stop):
        errors.append(_json_row(rows[i], f"{spec.key}:{i}", id_column, columns, fields, ids))
    return BlockRows(ids, fields, errors)


def _read_csv(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    names = formats.header(spec.path, spec.fmt)
    missing = sorted({c for c in columns.values() if c not in names})
    if missing:
        raise ValueError(
            f"{spec.fmt} input {spec.path!r} has no column {', '.join(map(repr, missing))} in its header (it has "
            f"{names}); pass text_column= / columns= naming the header's columns"
        )
    where = {c: names.index(c) for c in set(columns.values()) | ({id_column} & set(names))}
    ids: list[Any] = []
    fields: dict[str, list[Any]] = {role: [] for role in columns}
    errors: list[str | None] = []
    raws = formats.read_records(spec.path, spec.offset or 0, spec.rows, spec.fmt)
    for i, raw in enumerate(raws):
        row, err = formats.parse_record(raw, spec.fmt)
        rid = row[where[id_column]] if row is not None and where.get(id_column, len(row)) < len(row) else None
        if row is not None and len(row) != len(names):
            row, err = None, f"row has {len(row)} fields, the header {len(names)}"
        if id_column in where and not rid and err is None:
            err = f"missing id in column {id_column!r}"
        ids.append(rid or f"{spec.key}:{spec.start + i}")
        for role, col in columns.items():
            text, ferr = (None, None) if row is None else check_text(row[where[col]], col)
            fields[role].append(text)
            err = err or ferr
        errors.append(err)
    return BlockRows(ids, fields, errors)


def read_block(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    """Rows of one block: ids, the role -> values columns (``columns`` maps a task role to an input column name),
    and per-row read errors."""
    if spec.fmt == "parquet":
        return _read_parquet(spec, id_column, columns)
    if spec.fmt == "jsonl":
        return _read_jsonl(spec, id_column, columns)
    if spec.fmt == "json":
        return _read_json(spec, id_column, columns)
    if spec.fmt in formats.DELIMITERS:
        return _read_csv(spec, id_column, columns)
    return _read_text(spec, columns)
