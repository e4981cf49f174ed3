"""``xlmrxl.ray.Predictor``: the corpus worker as a Ray Data stateful actor class, for your own pipelines.

    import ray, xlmrxl.ray
    ds = ray.data.read_parquet("s3://bucket/texts/")
    ds = ds.map_batches(xlmrxl.ray.Predictor, fn_constructor_kwargs=dict(task="embed", model="/models/xlm-roberta-xl",
                        pooling="mean"), compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=4096)
    ds.write_parquet("s3://bucket/embeddings/")

Each actor loads the model once (on its GPU, or on the CPU without one). A batch (pyarrow table, pandas frame or dict
of arrays) comes back as a pyarrow table: the input columns plus the task's result columns and ``error`` (the
reason a row could not be processed, null otherwise), rows in input order; inside a batch the rows are sorted by
length and packed by ``max_batch_tokens``, as ``xlmrxl.corpus.run`` does (``run(..., engine="ray")`` adds files,
blocks, resume and the manifest on top of the same worker). ``xlmrxl.corpus.run`` is the way to get resumable
output; this class is the building block.
"""

from __future__ import annotations

from typing import Any

from .corpus.tasks import role_columns, task_class
from .corpus.worker import DEFAULT_MAX_BATCH_TOKENS, Worker, WorkerConfig

__all__ = ["Predictor"]


class Predictor:
    """Ray Data callable class: ``ds.map_batches(Predictor, fn_constructor_kwargs=dict(task=..., model=...))``."""

    def __init__(
        self,
        task: str,
        model: str,
        *,
        text_column: str = "text",
        columns: dict[str, str] | None = None,
        max_batch_tokens: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
        backend: str = "auto",
        **task_options: Any,
    ):
        cls = task_class(task)
        self.worker = Worker(
            WorkerConfig(
                task=task,
                model=str(model),
                columns=role_columns(cls, text_column, columns),
                max_batch_tokens=int(max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS),
                dtype=None if dtype is None else str(dtype),
                device=None if device is None else str(device),
                backend=backend,
                task_options=cls.check_options(task_options),
            )
        )

    def __call__(self, batch: Any) -> Any:
        """The batch with the result columns and ``error`` appended (a pyarrow table)."""
        import pyarrow as pa  # optional extra (xlmrxl[ray])

        if not isinstance(batch, pa.Table):
            batch = pa.Table.from_pandas(batch, preserve_index=False) if hasattr(batch, "iloc") else pa.table(batch)
        return self.worker.process_table(batch)
