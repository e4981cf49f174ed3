"""The Ray corpus engine: pending blocks as a Ray Data dataset, mapped by a pool of stateful worker actors.

Each actor (``BlockActor``, one model per GPU, or per CPU worker without GPUs) runs the same ``Worker`` as the local
engine on one block per call and returns the block's commit record; the driver only plans, collects records and
writes the manifest. Ray Data restarts an actor that dies and retries its block (``max_restarts`` /
``max_task_retries``, Ray Data's defaults for actor pools): a block is either committed or recomputed, and a
retried block that was committed before the crash is skipped by the worker. Two calls may run in one actor at a
time (``max_concurrency=2``): the next block is read and tokenized while the model computes the current one (the
worker holds a lock around the model).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .inputs import BlockSpec
from .worker import Worker, WorkerConfig

logger = logging.getLogger("xlmrxl")

_ACTOR_START_S = 1800  # how long the workers may take to start and load their models (XXL from a network disk)


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or an error naming the extra to install."""
    try:
        import ray  # optional extra (xlmrxl[ray]): imported only when the Ray engine runs
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "engine='ray' needs Ray Data: pip install 'xlmrxl[ray]' (ray[data] and pyarrow); or use engine='local'"
        ) from exc
    return ray


def ensure_ray(ray: Any) -> None:
    """Connect to the cluster named by ``RAY_ADDRESS``, or start a local one (no dashboard), unless already up."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        logger.info("xlmrxl corpus: connecting to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init()
        return
    # a local cluster's workers import the same xlmrxl as this process (a source checkout included)
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})


class BlockActor:
    """Ray Data actor: a ``Worker`` per actor; a batch of block descriptions in, their commit records out."""

    def __init__(self, config: dict[str, Any]):
        self.worker = Worker(WorkerConfig(**config))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["block_id"])
        records = []
        for i in range(n):
            spec = BlockSpec.from_dict({k: _scalar(v[i]) for k, v in batch.items()})
            records.append(json.dumps(self.worker.process_block(spec)))
        return {"record": records}


def _two_calls_per_actor(ray: Any, workers: int) -> dict[str, Any]:
    """``workers`` actors, each running two calls at once (the worker's lock lets one use the model while the other
    reads and tokenizes), in the spelling of the installed Ray."""
    params = inspect.signature(ray.data.ActorPoolStrategy.__init__).parameters
    # two blocks in flight per actor, not Ray's default four: no actor hoards blocks another could be running
    kw = {"size": workers, "max_tasks_in_flight_per_actor": 2}
    if "enable_true_multi_threading" in params:  # Ray >= 2.50: calls are single-threaded unless asked
        strategy = ray.data.ActorPoolStrategy(**kw, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
        return {"compute": strategy}
    return {"compute": ray.data.ActorPoolStrategy(**kw), "max_concurrency": 2}


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def run_ray(
    pending: list[BlockSpec],
    config: WorkerConfig,
    on_record: Callable[[dict[str, Any]], None],
    *,
    workers: int | None = None,
    num_gpus: float | None = None,
    progress: bool | None = None,
) -> None:
    """Compute every pending block on a Ray cluster; ``on_record`` gets each block's commit record."""
    ray = import_ray()
    if not pending:
        return
    ensure_ray(ray)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 and not str(config.device or "").startswith("cpu") else 0.0
    if workers is None:  # one model per GPU; without GPUs one per node (a model per CPU would multiply memory)
        workers = int(gpus // num_gpus) if num_gpus else max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    workers = max(1, min(int(workers), len(pending)))
    cpus_each = 1.0 if num_gpus else max(1.0, float(int(resources.get("CPU", 1)) // workers))
    cfg = config.to_dict()
    if not num_gpus:
        cfg["device"] = cfg["device"] or "cpu"
        cfg["threads"] = cfg["threads"] or int(cpus_each)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "wait_for_min_actors_s") if hasattr(ctx, k)}
    ctx.enable_progress_bars = False  # our bar counts rows and tokens
    if "wait_for_min_actors_s" in saved:
        # every worker loads its model before the first block is handed out: blocks spread over all of them
        ctx.wait_for_min_actors_s = max(int(ctx.wait_for_min_actors_s), _ACTOR_START_S)
    items = [{k: (-1 if v is None else v) for k, v in b.to_dict().items()} for b in pending]
    # one Ray block per corpus block (the keyword was `parallelism` before Ray 2.10)
    blocks_kw = (
        "override_num_blocks"
        if "override_num_blocks" in inspect.signature(ray.data.from_items).parameters
        else "parallelism"
    )
    ds = ray.data.from_items(items, **{blocks_kw: len(items)})
    out = ds.map_batches(
        BlockActor,
        fn_constructor_kwargs={"config": cfg},
        batch_size=1,
        num_gpus=num_gpus or None,
        num_cpus=cpus_each,
        **_two_calls_per_actor(ray, workers),
    )
    total = sum(b.rows for b in pending)
    bar = tqdm(
        total=total,
        unit="rows",
        desc=f"xlmrxl corpus {config.task} (ray x{workers})",
        disable=None if progress is None else not progress,
    )
    t0, tokens = time.perf_counter(), 0
    try:
        for row in out.iter_rows():
            record = json.loads(row["record"])
            tokens += record.get("tokens", 0)
            bar.update(record["rows"])
            bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)
            on_record(record)
    finally:
        bar.close()
        for k, v in saved.items():  # the caller's own Ray Data settings, as they were
            setattr(ctx, k, v)
