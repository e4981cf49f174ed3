"""Dynamic batching of ``xlmrxl serve``: one bounded queue, one model worker per device, batches by token budget.

- ``Engine.submit(rows)`` queues one request's rows (a ``Job``) and returns its results in row order. More than
  ``max_concurrent_requests`` jobs waiting or running -> ``Overloaded`` at once (HTTP 429): nothing waits unbounded.
- Each device's worker takes rows first-in first-out across all queued jobs until the next row would exceed
  ``max_batch_tokens`` real tokens (a longer row runs alone), so a large client batch is split across model batches
  and many small requests share one; the rows come back to their own job by index, never mixed.
- A job whose client went away (``Job.cancel``) loses its rows that have not started; a row that started finishes
  and is thrown away.
- The model runs in one thread per device; the event loop only schedules. ``stop()`` lets queued and running jobs
  finish first (SIGTERM), then ends the workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .runners import Row, Runner

logger = logging.getLogger("xlmrxl")


class Overloaded(RuntimeError):
    """The queue is full."""


class Job:
    """One request's rows and their results."""

    def __init__(self, rows: list[Row], loop: asyncio.AbstractEventLoop) -> None:
        self.rows = rows
        self.results: list[Any] = [None] * len(rows)
        self.next = 0  # first row not yet handed to a worker
        self.pending = len(rows)  # rows without a result
        self.future: asyncio.Future = loop.create_future()
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """See the module docstring. ``on_batch(rows, requests, tokens, padded_tokens, seconds)`` feeds the metrics."""

    def __init__(
        self,
        runners: list[Runner],
        max_batch_tokens: int = 16384,
        max_concurrent_requests: int = 512,
        on_batch: Callable[..., None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens={max_batch_tokens} must be >= 1")
        if max_concurrent_requests < 1:
            raise ValueError(f"max_concurrent_requests={max_concurrent_requests} must be >= 1")
        self.runners = runners
        self.max_batch_tokens = max_batch_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.on_batch, self.on_drop = on_batch, on_drop
        self.jobs: deque[Job] = deque()
        self.active = 0  # jobs accepted and not yet answered
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._pools: list[concurrent.futures.ThreadPoolExecutor] = []
        self._stopping = False
        self._delay = float(os.environ.get("XLMRXL_SERVE_TEST_DELAY", "0") or 0)  # tests: slow batches down

    @property
    def queued_rows(self) -> int:
        return sum(len(j.rows) - j.next for j in self.jobs)

    def start(self) -> None:
        self._wake = asyncio.Event()
        for i, runner in enumerate(self.runners):
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"xlmrxl-model-{i}")
            self._pools.append(pool)
            self._tasks.append(asyncio.get_running_loop().create_task(self._worker(runner, pool)))

    async def stop(self) -> None:
        """Finish every accepted job, then end the workers."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools:
            pool.shutdown(wait=True)

    async def submit(self, rows: list[Row]) -> list[Any]:
        """The rows' results in order; ``Overloaded`` when the queue is full. Cancelling the awaiting task (or
        ``Job.cancel``) drops the rows that have not started."""
        job = self.enqueue(rows)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancel()
            raise

    def enqueue(self, rows: list[Row]) -> Job:
        if self._stopping:
            raise Overloaded("the server is shutting down")
        if self.active >= self.max_concurrent_requests:
            raise Overloaded(
                f"{self.active} requests are already queued or running (--max-concurrent-requests "
                f"{self.max_concurrent_requests}); retry later"
            )
        job = Job(rows, asyncio.get_running_loop())
        self.active += 1
        if not rows:
            self._finish(job)
            return job
        self.jobs.append(job)
        assert self._wake is not None, "Engine.start() was not called"
        self._wake.set()
        return job

    def _finish(self, job: Job, exc: BaseException | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        self.active -= 1
        if job.future.done():
            return
        if job.cancelled:
            job.future.cancel()
        elif exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(job.results)

    def _take(self) -> list[tuple[Job, int]]:
        """The next batch: (job, row index) pairs, first-in first-out, within the token budget."""
        batch: list[tuple[Job, int]] = []
        tokens = 0
        while self.jobs:
            job = self.jobs[0]
            if job.cancelled:
                self.jobs.popleft()
                dropped = len(job.rows) - job.next
                job.pending -= dropped
                job.next = len(job.rows)
                if self.on_drop is not None and dropped:
                    self.on_drop(dropped)
                if job.pending == 0:
                    self._finish(job)
                continue
            row = job.rows[job.next]
            if batch and tokens + row.tokens > self.max_batch_tokens:
                break
            batch.append((job, job.next))
            tokens += row.tokens
            job.next += 1
            if job.next == len(job.rows):
                self.jobs.popleft()
        return batch

    async def _worker(self, runner: Runner, pool: concurrent.futures.Executor) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            batch = self._take()
            if not batch:
                if self._stopping and not self.jobs:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.jobs:  # rows left: another idle worker may take them
                self._wake.set()
            rows = [job.rows[i] for job, i in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(pool, self._run, runner, rows)
            except Exception as exc:  # the whole batch failed: every job in it gets the error (HTTP 424)
                logger.exception("xlmrxl serve: a batch of %d rows failed", len(rows))
                for job in {id(j): j for j, _ in batch}.values():
                    job.pending = 0
                    if job in self.jobs:
                        self.jobs.remove(job)
                    self._finish(job, exc)
                continue
            seconds = time.perf_counter() - t0
            if self.on_batch is not None:
                lengths = [r.tokens for r in rows]
                n_jobs = len({id(j) for j, _ in batch})
                self.on_batch(len(rows), n_jobs, sum(lengths), max(lengths) * len(rows), seconds)
            for (job, i), res in zip(batch, results):
                job.results[i] = res
                job.pending -= 1
                if job.pending == 0:
                    self._finish(job)

    def _run(self, runner: Runner, rows: list[Row]) -> list[Any]:
        if self._delay:
            time.sleep(self._delay)
        return runner.forward(rows)
