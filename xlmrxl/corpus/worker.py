"""The one corpus worker both engines run: read a block, tokenize it (ahead of the model, on a background thread),
sort by length, pack into token-budget batches, compute, restore row order, write the block durably, commit.

- ``Worker(config)`` loads the task's model once. ``process_block(spec)`` does one block (skipping it when it is
  already finished); ``iter_blocks(specs)`` does many with the next blocks read and tokenized on a thread while the
  model computes (``prefetch`` blocks ahead: memory is bounded by ``prefetch + 2`` blocks, never the input);
  ``process_table(table)`` computes rows without writing (``xlmrxl.ray.Predictor``).
- Batches: rows sorted by token length (longest first), cut greedily so that a batch holds at most
  ``max_batch_tokens`` real tokens (a longer row runs alone); results are put back in input order. The packed
  forward computes real tokens only, so a row's numbers do not depend on what else is in its batch (up to the
  float rounding of differently shaped matrix products: fp32 within 1e-6).
- Rows that cannot be processed keep their id and get a reason in the ``error`` column (null when fine). A batch
  that runs out of memory is retried row by row (a row too large even alone becomes an error row); any other
  exception fails the block, which is then not committed and is computed again by the next run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from . import inputs, store, tasks

logger = logging.getLogger("xlmrxl")

DEFAULT_MAX_BATCH_TOKENS = 8192


@dataclasses.dataclass
class WorkerConfig:
    """Everything a worker needs, plain data (sent to Ray actors as a dict)."""

    task: str
    model: str
    columns: dict[str, str]
    id_column: str = "id"
    output: str | None = None
    fingerprint: str = ""
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    dtype: str | None = None
    device: str | None = None
    backend: str = "auto"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    verify: bool = True
    fault: str | None = None  # tests only: XLMRXL_CORPUS_FAULT, see store.write_block
    threads: int | None = None  # torch CPU threads (Ray CPU workers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Prepared:
    """A block read and tokenized, ready for the model."""

    spec: inputs.BlockSpec | None
    ids: list[Any]
    items: list[Any]
    lengths: list[int]
    errors: list[str | None]
    seconds: float = 0.0  # time in the model (lock held) and writing: the block's own cost, waits excluded


def pack(lengths: list[int], valid: list[bool], max_batch_tokens: int) -> list[list[int]]:
    """Row indices of each batch: valid rows sorted by length (longest first, ties by index: deterministic), cut
    greedily at ``max_batch_tokens`` real tokens; a row longer than the budget runs alone."""
    order = sorted((i for i in range(len(lengths)) if valid[i]), key=lambda i: (-lengths[i], i))
    batches, cur, tokens = [], [], 0
    for i in order:
        if cur and tokens + lengths[i] > max_batch_tokens:
            batches.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [v for p in parts for v in p]


def _take(values: Any, index: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index]


class Worker:
    """One model, many blocks; see the module docstring."""

    def __init__(self, config: WorkerConfig | dict[str, Any]):
        if isinstance(config, dict):
            config = WorkerConfig(**config)
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.task = tasks.load_task(
            config.task,
            config.model,
            dict(config.task_options),
            dtype=config.dtype,
            device=config.device,
            backend=config.backend,
        )
        self._lock = threading.Lock()  # one forward at a time; reading and tokenizing run beside it
        self.on_batch: Callable[[int, int], None] | None = None  # (rows, tokens) after each batch: progress bars
        self.schema = self._schema()

    def _schema(self):
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        return pa.schema(self.task.schema() + [pa.field("error", pa.string())])

    # -- the three steps ----------------------------------------------------------------------------------------
    def read(self, spec: inputs.BlockSpec) -> Prepared:
        """Read and tokenize one block (no model involved: runs ahead of the model on another thread)."""
        rows = inputs.read_block(spec, self.config.id_column, self._input_columns())
        items, lengths = self.task.prepare(rows.fields, rows.errors)
        return Prepared(spec, rows.ids, items, lengths, rows.errors)

    def _input_columns(self) -> dict[str, str]:
        cols = self.config.columns
        return {r: cols.get(r, r) for r in self.task.roles + tuple(r for r in self.task.optional_roles if r in cols)}

    @torch.inference_mode()
    def compute(self, prep: Prepared) -> dict[str, Any]:
        """The result columns (arrow arrays, input order) of a prepared block, and the ``error`` column."""
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        n = len(prep.items)
        valid_list = [prep.errors[i] is None and prep.items[i] is not None for i in range(n)]
        with self._lock:
            t0 = time.perf_counter()
            if self.task.packs:
                batches = pack(prep.lengths, valid_list, self.config.max_batch_tokens)
            else:
                batches = [[i for i in range(n) if valid_list[i]]] if any(valid_list) else []
            order: list[int] = []
            parts: dict[str, list[Any]] = {}
            for batch in batches:
                try:
                    out = self.task.forward([prep.items[i] for i in batch])
                except Exception as exc:
                    if not _out_of_memory(exc):  # a bug or a broken model fails the block loudly, never the rows
                        raise
                    # out of memory on one batch must not lose the block: retry its rows one by one, so only a row
                    # too large even alone gets an error (with the reason) and every other row its result
                    logger.warning(
                        "xlmrxl corpus: a batch ran out of memory; retrying its %d rows one by one", len(batch)
                    )
                    _free_cache()
                    for i in batch:
                        try:
                            one = self.task.forward([prep.items[i]])
                        except Exception as exc1:
                            if not _out_of_memory(exc1):
                                raise
                            _free_cache()
                            prep.errors[i] = (
                                f"out of memory even alone ({prep.lengths[i]} tokens); lower max_length or pass "
                                "truncate=True with a smaller max_length"
                            )
                            valid_list[i] = False
                            continue
                        order.append(i)
                        for k, v in one.items():
                            parts.setdefault(k, []).append(v)
                    continue
                order.extend(batch)
                for k, v in out.items():
                    parts.setdefault(k, []).append(v)
                if self.on_batch is not None:
                    self.on_batch(len(batch), sum(prep.lengths[i] for i in batch))
            prep.seconds += time.perf_counter() - t0
        valid = np.array(valid_list, dtype=bool)
        # restore input order: the valid rows' results, sorted by their row index
        restore = np.argsort(np.array(order, dtype=np.int64), kind="stable")
        results = {k: _take(_concat(v), restore) for k, v in parts.items()}
        cols = self.task.columns(n, valid, results)
        cols["error"] = pa.array(prep.errors, type=pa.string())
        return cols

    def write(self, prep: Prepared, cols: dict[str, Any]) -> dict[str, Any]:
        """Write the block and its commit record; returns the record."""
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        spec = prep.spec
        id_col = self.config.id_column
        if id_col in cols:
            raise ValueError(f"id_column={id_col!r} clashes with an output column; pass another id_column")
        ids = prep.ids if isinstance(prep.ids, pa.Array) else pa.array(prep.ids, type=pa.string())
        table = pa.table({id_col: ids, **cols})
        t0 = time.perf_counter()
        info = store.write_block(self.config.output, spec.block_id, table, fault=self.config.fault)
        prep.seconds += time.perf_counter() - t0
        record = {
            "block_id": spec.block_id,
            "file": store.block_path(self.config.output, spec.block_id).name,
            "input": spec.path,
            "start": spec.start,
            "stop": spec.stop,
            "rows": spec.rows,
            "errors": sum(e is not None for e in prep.errors),
            "tokens": int(sum(prep.lengths)),
            "seconds": round(prep.seconds, 4),
            "fingerprint": self.config.fingerprint,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            **info,
        }
        store.commit(self.config.output, record)
        return record

    # -- blocks ------------------------------------------------------------------------------------------------
    def process_block(self, spec: inputs.BlockSpec) -> dict[str, Any]:
        """Do one block unless it is finished; returns its commit record (``skipped`` says which)."""
        done = store.finished(self.config.output, spec.block_id, self.config.fingerprint, verify=self.config.verify)
        if done is not None:
            return {**done, "skipped": True}
        return self._run(self.read(spec))

    def _run(self, prep: Prepared) -> dict[str, Any]:
        cols = self.compute(prep)
        return {**self.write(prep, cols), "skipped": False}

    def iter_blocks(self, specs: Iterable[inputs.BlockSpec], prefetch: int = 1) -> Iterator[dict[str, Any]]:
        """Commit records of ``specs`` in order, the next ``prefetch`` blocks read and tokenized on a thread while
        the model computes."""
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def produce() -> None:
            try:
                for spec in specs:
                    if stop.is_set():
                        return
                    q.put(("ok", self.read(spec)))
            except BaseException as exc:  # handed to the consumer, which raises it
                q.put(("error", exc))
            q.put(("done", None))

        thread = threading.Thread(target=produce, name="xlmrxl-corpus-reader", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = q.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield self._run(value)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass

    # -- rows without files (Ray Data pipelines) -----------------------------------------------------------------
    def process_table(self, table) -> Any:
        """The input table with the result columns and ``error`` appended (rows in input order)."""
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        n = table.num_rows
        fields: dict[str, list[Any]] = {}
        errors: list[str | None] = [None] * n
        for role, col in self._input_columns().items():
            if col not in table.column_names:
                if role in self.task.optional_roles:
                    continue
                raise ValueError(
                    f"the batch has no column {col!r} (it has {table.column_names}); pass text_column= / columns="
                )
            values = []
            for i, v in enumerate(table.column(col).to_pylist()):
                text, err = inputs.check_text(v, col)
                values.append(text)
                errors[i] = errors[i] or err
            fields[role] = values
        items, lengths = self.task.prepare(fields, errors)
        cols = self.compute(Prepared(None, [], items, lengths, errors))
        for name, arr in cols.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(pa.field(name, arr.type), arr)
        return table
