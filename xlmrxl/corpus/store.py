"""Corpus outputs: durable parquet blocks, one commit record per finished block, the manifest, and the run lock.

Layout of an output directory::

    _manifest.json                 settings + fingerprint of the run, the finished blocks (rewritten atomically)
    part-<block_id>.parquet        one block's results, rows in input order
    _commits/<block_id>.json       the block's commit record: rows, bytes, sha256 (written after the block)
    .xlmrxl-corpus.lock            held (flock) by the run writing here

Durability, as databases do it: a block is written under a temporary name, fsynced, renamed into place, the
directory fsynced, and only then is its commit record written the same way; the commit record is the commit point.
A block counts as finished only when its commit record matches the run's fingerprint and the file on disk has the
recorded size and sha256, so a crash at any moment never leaves a half-written block counted as finished, and a
block deleted or corrupted later is simply recomputed. Nothing outside these names is ever written or removed.

Only the blocks listed in the manifest are results. A run refuses to start in a directory holding ``part-*`` files
that are not its own blocks (another run's with other settings, another tool's): ``check_blocks``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("xlmrxl")

MANIFEST = "_manifest.json"  # "_" and "." names are skipped by pyarrow.dataset: pq.read_table(out) reads the blocks
COMMITS = "_commits"
LOCK = ".xlmrxl-corpus.lock"
FORMAT = "xlmrxl-corpus/2"  # 2: vector columns are list<float> (null lists of zero length), keys keep the suffix
_TMP_SUFFIX = ".tmp"


def block_path(out: str | os.PathLike, block_id: str) -> Path:
    return Path(out) / f"part-{block_id}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name beside it, fsync, rename into place, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_block(out: str | os.PathLike, block_id: str, table, fault: str | None = None) -> dict[str, Any]:
    """Write one block's table durably; returns its size and sha256 (for the commit record).

    ``fault`` (tests only, from ``XLMRXL_CORPUS_FAULT=<block_id>:<marker file>``): when it names this block and the
    marker file does not exist yet, create the marker and kill this process after the temporary file is written
    and before the rename, the worst moment for a crash."""
    import pyarrow.parquet as pq  # optional extra (xlmrxl[corpus])

    final = block_path(out, block_id)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        if fault:
            _maybe_die(fault, block_id)
        info = {"bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(final.parent)
    return info


def _maybe_die(fault: str, block_id: str) -> None:
    target, _, marker = fault.partition(":")
    if target != block_id or not marker or os.path.exists(marker):
        return
    Path(marker).write_text(f"killed while writing {block_id} (pid {os.getpid()})\n")
    logger.warning("xlmrxl corpus: XLMRXL_CORPUS_FAULT kills this process while writing block %s", block_id)
    os._exit(17)


def commit(out: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write a block's commit record (the commit point: the block file is already durable)."""
    d = Path(out) / COMMITS
    d.mkdir(exist_ok=True)
    write_atomic(d / f"{record['block_id']}.json", json.dumps(record, sort_keys=True).encode())


def finished(out: str | os.PathLike, block_id: str, fingerprint: str, verify: bool = True) -> dict[str, Any] | None:
    """The block's commit record when the block is finished (record of this run, file present, size and sha256
    as recorded; ``verify=False`` checks the size only), else None."""
    rec_path = Path(out) / COMMITS / f"{block_id}.json"
    try:
        rec = json.loads(rec_path.read_text())
        path = block_path(out, block_id)
        if rec.get("fingerprint") != fingerprint or path.stat().st_size != rec["bytes"]:
            return None
        if verify and _sha256(path) != rec["sha256"]:
            logger.warning("xlmrxl corpus: block %s does not match its checksum; recomputing it", block_id)
            return None
        return rec
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# the output directory: lock, manifest
# ---------------------------------------------------------------------------------------------------------------
def _ours(name: str) -> bool:
    return name in (MANIFEST, COMMITS, LOCK) or name.startswith(("part-", ".part-", f".{MANIFEST}"))


@contextlib.contextmanager
def locked(out: str | os.PathLike) -> Iterator[Path]:
    """Create the output directory if needed (never re-create or clear one), check it holds only our files, and
    hold its lock for the run."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"output {str(d)!r} exists and is not a directory; pass a directory")
    d.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in d.iterdir() if not _ours(p.name))
    if foreign and not (d / MANIFEST).exists():
        raise FileExistsError(
            f"output directory {str(d)!r} is not empty and holds no xlmrxl corpus run ({', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}); pass a new or empty directory"
        )
    fh = open(d / LOCK, "a")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(f"another xlmrxl corpus run is writing to {str(d)!r}; wait for it to finish") from exc
        _remove_stale_temporaries(d)
        yield d
        _remove_stale_temporaries(d)  # a worker killed and retried during this run left its temporary file
    finally:
        fh.close()


def _remove_stale_temporaries(d: Path) -> None:
    """Temporary files of a crashed run (ours by name; only while holding the lock, so no live writer owns them)."""
    stale = [
        *d.glob(f".part-*{_TMP_SUFFIX}"),
        *d.glob(f".{MANIFEST}.*{_TMP_SUFFIX}"),
        *(d / COMMITS).glob(f".*{_TMP_SUFFIX}"),
    ]
    for p in stale:
        logger.info("xlmrxl corpus: removing %s, left by an interrupted run", p)
        p.unlink(missing_ok=True)


def check_blocks(out: str | os.PathLike, planned: set[str], fingerprint: str) -> None:
    """Refuse a directory holding ``part-*`` files that are not this run's: a block this run does not plan, or one
    committed by a run with other settings (the manifest moved away), or another tool's. They would be read back as
    results (``pq.read_table(out)`` reads every ``part-*``), so nothing starts until they are gone; none is removed
    (they may be someone's data). A planned block without a commit record (a crash between its rename and its
    commit) is this run's and is simply written again."""
    d = Path(out)
    alien = []
    for p in sorted(d.glob("part-*")):
        block_id = p.name[len("part-") : -len(".parquet")] if p.name.endswith(".parquet") else None
        if block_id is None or block_id not in planned:
            alien.append(p.name)
            continue
        try:
            rec = json.loads((d / COMMITS / f"{block_id}.json").read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            rec = {}
        if rec.get("fingerprint") != fingerprint:
            alien.append(p.name)
    if alien:
        names = ", ".join(alien[:3]) + (f" and {len(alien) - 3} more" if len(alien) > 3 else "")
        raise FileExistsError(
            f"output directory {str(d)!r} holds {len(alien)} part-* file(s) that are not blocks of this run ({names}): "
            "left by a run with other settings or written by another tool, they would be read back as results; "
            "pass a new output directory, or move them away (with _commits/ and _manifest.json) to start afresh here"
        )


def read_manifest(out: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({exc}); pass a new output directory, or move it away with the "
            "directory's part-* files and _commits/ to start afresh here"
        ) from exc


def check_settings(out: str | os.PathLike, settings: dict[str, Any], fingerprint: str) -> None:
    """A rerun must have the settings the directory's results were made with (else: a clear error, nothing touched)."""
    old = read_manifest(out)
    if old is None or old.get("fingerprint") == fingerprint:
        return
    changes = settings_changes(old.get("settings", {}), settings)
    detail = "; ".join(changes) if changes else "the manifest's format changed"
    raise ValueError(
        f"output directory {str(out)!r} holds results of a run with other settings: {detail}. Rerun with the same "
        "settings to resume, or pass a new output directory"
    )


def settings_changes(before: Any, now: Any, name: str = "") -> list[str]:
    """One ``name: old -> new`` line per setting whose value changed, nested options by dotted name
    (``options.pooling: 'cls' -> 'mean'``); input files by path (added, removed, size or mtime changed)."""
    if isinstance(before, dict) and isinstance(now, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(now), key=str):
            sub = f"{name}.{key}" if name else str(key)
            if key not in before:
                out.append(f"{sub}: (not set) -> {_short(now[key])}")
            elif key not in now:
                out.append(f"{sub}: {_short(before[key])} -> (not set)")
            else:
                out += settings_changes(before[key], now[key], sub)
        return out
    if _file_list(before) and _file_list(now):
        return settings_changes(
            {f[0]: {"size": f[1], "mtime_ns": f[2]} for f in before},
            {f[0]: {"size": f[1], "mtime_ns": f[2]} for f in now},
            name,
        )
    if before != now:
        return [f"{name}: {_short(before)} -> {_short(now)}"]
    return []


def _file_list(value: Any) -> bool:
    """The ``inputs`` setting: ``[[path, size, mtime_ns], ...]``."""
    return isinstance(value, list) and all(
        isinstance(f, (list, tuple)) and len(f) == 3 and isinstance(f[0], str) for f in value
    )


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_manifest(
    out: str | os.PathLike, settings: dict[str, Any], fingerprint: str, blocks: list, records: dict[str, dict]
) -> dict[str, Any]:
    """Rewrite ``_manifest.json`` atomically from the commit records of the planned blocks."""
    done = [records[b.block_id] for b in blocks if b.block_id in records]
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "settings": settings,
        "total_blocks": len(blocks),
        "finished_blocks": len(done),
        "total_rows": sum(b.rows for b in blocks),
        "finished_rows": sum(r["rows"] for r in done),
        "error_rows": sum(r.get("errors", 0) for r in done),
        "complete": len(done) == len(blocks),
        "blocks": [
            {k: r[k] for k in ("block_id", "file", "input", "start", "stop", "rows", "errors", "bytes", "sha256")}
            for r in done
        ],
    }
    write_atomic(Path(out) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest
