"""``xlmrxl.corpus.run``: plan the blocks, skip the finished ones, run the rest on the chosen engine, keep the
manifest.

    xlmrxl.corpus.run("embed", "/models/xlm-roberta-xl", "texts/*.parquet", "out/", pooling="mean", normalize=True)
    xlmrxl.corpus.run("classify", "/models/xlmr-xl-sentiment", "reviews.jsonl", "out/", engine="ray")

Contract
--------
- ``task``: ``"embed"`` / ``"classify"`` / ``"fill-mask"`` / ``"comet"`` (columns and options: ``tasks.py``).
  ``model``: a checkpoint directory (a COMET checkpoint for ``comet``). ``input``: a parquet, jsonl, json, csv,
  tsv or text file, a directory or a glob of them, each parsed by its suffix (``inputs.py``; compressed files are
  refused). ``output``: a directory, created if needed; one that holds other files, or ``part-*`` files that are
  not this run's blocks, is refused.
- ``text_column`` names the text column (text tasks); ``columns`` maps the task's roles to input columns
  (``comet``: ``{"src": ..., "mt": ..., "ref": ...}``; by default the role names). The same names select parquet
  columns, jsonl / json object keys and csv / tsv header names; a jsonl line or json item that is a plain string is
  the text, and text files are one text per line. ``id_column`` is carried to the output when the input has it
  (else generated ``"<file>:<row>"`` ids, ``<file>`` the path below the input root, suffix included).
- ``rows_per_block`` (default 10000) bounds a block; a block never spans two files. ``max_batch_tokens`` (default
  8192) is the token budget of a batch. ``dtype`` (default float32) and ``device`` (default CUDA when present) are
  the model's; ``engine="ray"`` takes ``workers`` (default: one per GPU, else one per node, using its CPUs) and
  ``num_gpus`` per worker. ``truncate=True`` cuts rows longer than the model's maximum instead of reporting them.
- Resume: the same call with the same output directory skips finished blocks (commit record and checksum match)
  and computes the rest; other settings (task, model, options, block size, inputs changed) are refused with an error
  saying what differs. Engine, workers, batch budget and device may change between runs.
- Returns a summary: blocks computed / skipped, rows, error rows, seconds, rows/s, tokens/s, ``complete``.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .. import env
from . import inputs, store, tasks
from .local import run_local
from .ray_engine import import_ray, run_ray
from .worker import DEFAULT_MAX_BATCH_TOKENS, WorkerConfig

logger = logging.getLogger("xlmrxl")

ENGINES = ("local", "ray")
FAULT_ENV = "XLMRXL_CORPUS_FAULT"  # tests only: "<block_id>:<marker file>" kills the worker writing that block once
_MANIFEST_EVERY_S = 5.0


def _as_list(input: Any) -> list:
    return list(input) if isinstance(input, (list, tuple)) else [input]


def run(
    task: str,
    model: str | os.PathLike,
    input: str | os.PathLike | list,
    output: str | os.PathLike,
    *,
    engine: str = "local",
    id_column: str = "id",
    text_column: str = "text",
    columns: dict[str, str] | None = None,
    max_batch_tokens: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    rows_per_block: int = 10_000,
    workers: int | None = None,
    num_gpus: float | None = None,
    backend: str = "auto",
    progress: bool | None = None,
    verify: bool = True,
    **task_options: Any,
) -> dict[str, Any]:
    """Run ``task`` over every row of ``input`` into ``output``; see the module docstring."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not supported; use 'local' or 'ray'")
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError("xlmrxl.corpus reads and writes parquet with pyarrow: pip install 'xlmrxl[corpus]'")
    task_cls = tasks.task_class(task)
    options = task_cls.check_options(task_options)
    if task == "comet":
        tasks.require_comet()
    if engine == "ray":
        import_ray()  # fail before any work when the extra is missing
    budget = int(max_batch_tokens) if max_batch_tokens is not None else DEFAULT_MAX_BATCH_TOKENS
    if budget < 1:
        raise ValueError(f"max_batch_tokens={max_batch_tokens!r} must be a positive integer")
    model_path = str(Path(model).resolve())
    if not (Path(model_path).is_dir() or task == "comet" and Path(model_path).is_file()):
        what = "a COMET checkpoint (model.ckpt or its directory)" if task == "comet" else "a checkpoint directory"
        raise FileNotFoundError(f"model={str(model)!r} is not {what}")
    options = task_cls.resolve(options, model_path)  # e.g. embed's pooling "auto": the checkpoint's, else mean
    cols = tasks.role_columns(task_cls, text_column, columns)
    files = inputs.discover(input)
    out = Path(output).resolve()
    given = [Path(p) for p in _as_list(input)]
    scanned = [p.resolve() for p in given if p.is_dir()]  # directories and globs are listed again on a rerun
    if any(glob.has_magic(str(p)) and not p.exists() for p in given):
        scanned += [Path(f.path).parent for f in files]
    for root in scanned + [Path(f.path) for f in files]:  # a rerun must never read our own blocks as input
        if (root in scanned and out.is_relative_to(root)) or root.is_relative_to(out):
            raise ValueError(
                f"output {str(output)!r} and the input {str(root)!r} overlap (the output's blocks would be read as "
                "input on a rerun); pass an output directory outside the input"
            )
    blocks = inputs.plan(files, int(rows_per_block))
    settings = {
        "format": store.FORMAT,  # outputs of an older layout are refused, never mixed with new blocks
        "task": task,
        "model": model_path,
        "options": options,
        "columns": cols,
        "id_column": id_column,
        "rows_per_block": int(rows_per_block),
        "dtype": str(tasks.parse_dtype(dtype)).replace("torch.", ""),
        "inputs": [[f.path, f.size, f.mtime_ns] for f in files],
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    config = WorkerConfig(
        task=task,
        model=model_path,
        columns=cols,
        id_column=id_column,
        output=str(out),
        fingerprint=fingerprint,
        max_batch_tokens=budget,
        dtype=dtype if dtype is None else str(dtype),
        device=None if device is None else str(device),
        backend=backend,
        task_options=options,
        verify=verify,
        fault=str(env.get(FAULT_ENV)) or None,
    )
    t0 = time.perf_counter()
    with store.locked(out):
        store.check_settings(out, settings, fingerprint)
        store.check_blocks(out, {b.block_id for b in blocks}, fingerprint)
        records: dict[str, dict[str, Any]] = {}
        for b in blocks:
            rec = store.finished(out, b.block_id, fingerprint, verify=verify)
            if rec is not None:
                records[b.block_id] = rec
        skipped = sorted(records)
        pending = [b for b in blocks if b.block_id not in records]
        store.write_manifest(out, settings, fingerprint, blocks, records)
        logger.info(
            "xlmrxl corpus: %d blocks (%d rows): %d finished before, %d to compute on engine %s",
            len(blocks),
            sum(b.rows for b in blocks),
            len(skipped),
            len(pending),
            engine,
        )
        computed: list[str] = []
        last_write = [time.monotonic()]

        def on_record(rec: dict[str, Any]) -> None:
            rec = {k: v for k, v in rec.items() if k != "skipped"}
            records[rec["block_id"]] = rec
            computed.append(rec["block_id"])
            if time.monotonic() - last_write[0] > _MANIFEST_EVERY_S:
                store.write_manifest(out, settings, fingerprint, blocks, records)
                last_write[0] = time.monotonic()

        try:
            if engine == "local":
                run_local(pending, config, on_record, progress=progress)
            else:
                run_ray(pending, config, on_record, workers=workers, num_gpus=num_gpus, progress=progress)
        finally:
            # the records on disk are the truth (a worker may have committed a block whose record never came back)
            for b in pending:
                rec = store.finished(out, b.block_id, fingerprint, verify=False)
                if rec is not None:
                    records[b.block_id] = rec
            manifest = store.write_manifest(out, settings, fingerprint, blocks, records)
    missing = [b.block_id for b in blocks if b.block_id not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} block(s) did not finish ({missing[:3]}...); rerun to compute them")
    seconds = time.perf_counter() - t0
    done_now = [records[b] for b in computed if b in records]
    rows_now = sum(r["rows"] for r in done_now)
    tokens_now = sum(r.get("tokens", 0) for r in done_now)
    return {
        "output": str(out),
        "blocks": len(blocks),
        "computed_blocks": sorted(set(computed)),
        "skipped_blocks": skipped,
        "rows": manifest["total_rows"],
        "error_rows": manifest["error_rows"],
        "computed_rows": rows_now,
        "seconds": seconds,
        "rows_per_s": rows_now / seconds if seconds > 0 else 0.0,
        "tokens_per_s": tokens_now / seconds if seconds > 0 else 0.0,
        "complete": manifest["complete"],
    }
