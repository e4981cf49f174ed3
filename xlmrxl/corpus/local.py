"""The local corpus engine: the worker in this process, blocks in order, a tqdm bar with rows/s, tokens/s and ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from .inputs import BlockSpec
from .worker import Worker, WorkerConfig


def run_local(
    pending: list[BlockSpec],
    config: WorkerConfig,
    on_record: Callable[[dict[str, Any]], None],
    *,
    progress: bool | None = None,
    prefetch: int = 1,
) -> None:
    """Compute every pending block in this process; ``on_record`` gets each block's commit record."""
    if not pending:
        return
    worker = Worker(config)
    total = sum(b.rows for b in pending)
    # progress=None: tqdm shows the bar only when stderr is a terminal
    bar = tqdm(
        total=total,
        unit="rows",
        desc=f"xlmrxl corpus {config.task}",
        disable=None if progress is None else not progress,
    )
    t0 = time.perf_counter()
    seen = {"tokens": 0, "rows_in_block": 0}

    def tick(rows: int, tokens: int) -> None:  # after every batch: the bar moves within a block too
        seen["tokens"] += tokens
        seen["rows_in_block"] += rows
        bar.update(rows)
        bar.set_postfix(tokens_per_s=f"{seen['tokens'] / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    worker.on_batch = tick
    try:
        for record in worker.iter_blocks(pending, prefetch=prefetch):
            bar.update(record["rows"] - seen["rows_in_block"])  # the block's error rows, never in a batch
            seen["rows_in_block"] = 0
            on_record(record)
    finally:
        bar.close()
