"""Corpus inputs: find the input files, cut each into blocks of at most ``rows_per_block`` rows, read one block.

- Input: a parquet / jsonl / text file, a directory (every ``*.parquet``, ``*.jsonl``, ``*.txt`` below it, sorted), or
  a glob. The format comes from the suffix (``.parquet``, ``.jsonl`` / ``.ndjson``, anything else is text).
- A block never spans two files. Parquet row counts come from the footer; jsonl / text files are scanned once for
  line starts (byte offsets are kept at block boundaries, so a block is read by one seek, never by re-reading the file).
- Generated ids (input without the id column, text files): ``"<key>:<row>"`` with ``key`` the file's path relative
  to the input root without its suffix (the file stem for a single file) and ``row`` the 0-based row in that file.
- Reading never raises for one bad row: undecodable bytes, invalid JSON, a null or non-string field become that
  row's error (the id is kept), so every row reaches the output.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".tsv")


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: its path, format (``parquet`` / ``jsonl`` / ``text``) and stable key (for ids and names)."""

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
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "text"


def discover(input: str | os.PathLike | list) -> list[InputFile]:
    """The input files, sorted, each with its format and key; an error naming what was wrong when there are none."""
    if isinstance(input, (list, tuple)):
        files: list[InputFile] = []
        for one in input:
            files.extend(discover(one))
        keys = [f.key for f in files]
        if len(set(keys)) != len(keys):
            raise ValueError("two input files share a name (their ids would collide); pass a directory instead")
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
            if q.is_file()
            and not q.name.startswith((".", "_"))
            and q.suffix.lower() in PARQUET_SUFFIXES + JSONL_SUFFIXES + TEXT_SUFFIXES
        )
        if not paths:
            raise FileNotFoundError(f"input directory {text!r} holds no .parquet, .jsonl or .txt files")
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
        key = q.relative_to(root).with_suffix("").as_posix()
        out.append(InputFile(str(q.resolve()), _fmt(q), key, st.st_size, st.st_mtime_ns))
    return out


def _block_id(f: InputFile, index: int) -> str:
    """Stable, file-name-safe block name: a readable slug of the key, a hash of the key, the block index."""
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in f.key)[-40:].strip("-") or "input"
    digest = hashlib.sha256(f.key.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-{index:06d}"


def _line_starts(path: str, every: int) -> tuple[int, list[int]]:
    """Number of rows (lines; a last line without newline counts, an empty tail does not) and the byte offset of
    every ``every``-th row's start."""
    starts, n, pos = [], 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            if n % every == 0:
                starts.append(pos)
            pos += len(line)
            n += 1
    return n, starts


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
        else:
            n, starts = _line_starts(f.path, rows_per_block)
        for i, off in enumerate(starts):
            start = i * rows_per_block
            blocks.append(
                BlockSpec(_block_id(f, i), f.path, f.fmt, f.key, start, min(n, start + rows_per_block), offset=off)
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
            "use a jsonl or parquet input"
        )
    ids = [f"{spec.key}:{spec.start + i}" for i in range(spec.rows)]
    texts, errors = [], []
    for raw in _read_lines(spec):
        text, err = check_text(raw, "text")
        texts.append(text)
        errors.append(err.replace("column 'text'", "line") if err else None)
    return BlockRows(ids, {"text": texts}, errors)


def _read_jsonl(spec: BlockSpec, id_column: str, columns: dict[str, str]) -> BlockRows:
    ids: list[Any] = []
    fields: dict[str, list[Any]] = {role: [] for role in columns}
    errors: list[str | None] = []
    for i, raw in enumerate(_read_lines(spec)):
        gen_id = f"{spec.key}:{spec.start + i}"
        err = None
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        except UnicodeDecodeError as exc:
            obj, err = {}, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        except ValueError as exc:
            obj, err = {}, f"line is not a JSON object ({str(exc).splitlines()[0][:80]})"
        rid = obj.get(id_column)
        ids.append(gen_id if rid is None else str(rid))  # jsonl ids are written as strings
        for role, col in columns.items():
            text, ferr = (None, None) if err else check_text(obj.get(col), col)
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
    return _read_text(spec, columns)
