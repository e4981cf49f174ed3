"""Corpus tasks: what ``embed``, ``classify``, ``fill-mask`` and ``comet`` compute for a batch of rows, and their
output columns.

A task loads its model once, checks and tokenizes rows (``prepare``: a bad row gets a reason, never an exception),
computes a batch (``forward``) and declares its output columns (``schema``) so every block, even one made only of
bad rows, has the same schema. The encoder tasks run the padding-free path (``forward_packed``: real tokens only)
and read what they need from the packed states; ``comet`` hands the whole block to COMET's own ``predict``.

Output columns (besides the id column and ``error``):
- ``embed``: ``embedding`` list of ``hidden_size`` float32 (``vector_dtype="float16"``: float16); ``pooling`` ``"auto"``
  (default: the checkpoint's sentence-transformers pooling, else mean; ``xlmrxl.pooling``), ``"cls"`` or ``"mean"``
  (over real tokens), ``normalize=True`` L2-normalises (in float32, before the cast).
- ``classify``: ``logits`` and ``probabilities`` (softmax; sigmoid for ``multi_label_classification`` or one
  label), lists of ``num_labels`` float32, ``label_id`` (argmax) and ``label`` (the config's ``id2label``).
- ``fill-mask``: ``predictions``, one list per ``<mask>`` of ``top_k`` (default 5) ``{token, token_str, score}``,
  the LM head run only at the mask positions, scores the float32 softmax over the vocabulary (as
  ``xlmrxl.pipeline("fill-mask")``).
- ``comet``: ``score`` (float64) and, for XCOMET models, ``error_spans`` (``{text, start, end, severity,
  confidence}``), from ``xlmrxl.comet.load(model)``'s ``predict``.

An error row is null in every result column (a vector column holds a null list of zero length: ``null_lists``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xlmrxl

from ..pooling import AUTO, resolve_pooling

logger = logging.getLogger("xlmrxl")

TASKS = ("embed", "classify", "fill-mask", "comet")
_LARGE = int(1e20)  # tokenizers' "no model_max_length"


def parse_dtype(dtype: None | str | torch.dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    names.update({"float16": torch.float16, "fp16": torch.float16, "half": torch.float16})
    name = str(dtype).lower().replace("torch.", "")
    if name not in names:
        raise ValueError(f"dtype={dtype!r} is not supported; use float32, bfloat16 or float16")
    return names[name]


def parse_device(device: None | str | torch.device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available here; use device='cpu'")
    return dev


def null_lists(values: np.ndarray | None, valid: np.ndarray, value_type: Any) -> Any:
    """A ``list<value_type>`` array of ``len(valid)`` rows: the rows of ``values`` (one per valid row, in order) where
    ``valid`` is True, a null list of zero length elsewhere.

    Built from explicit offsets and a validity mask: pyarrow < 22 cannot write a null list that has values behind it
    ("Lists with non-zero length null components", which every fixed-size list null has), this writes on 14 and later.
    Both engines and ``xlmrxl.ray.Predictor`` build their vector columns here."""
    import pyarrow as pa  # optional extra (xlmrxl[corpus])

    valid = np.asarray(valid, dtype=bool)
    np_type = np.float16 if value_type == pa.float16() else np.float32
    rows = np.zeros((0, 0), dtype=np_type) if values is None or not len(values) else np.asarray(values, dtype=np_type)
    if int(valid.sum()) != len(rows):
        raise ValueError(f"{len(rows)} result rows for {int(valid.sum())} valid rows")
    width = rows.shape[1] if rows.ndim == 2 else 0
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid.astype(np.int32) * width, out=offsets[1:])
    flat = pa.array(rows.reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), flat, mask=pa.array(~valid, type=pa.bool_()))


class Task:
    """Shared parts of every task: the input roles, options, and the column builder."""

    name = ""
    roles: tuple[str, ...] = ("text",)
    optional_roles: tuple[str, ...] = ()
    packs = True  # rows are sorted by length and packed into token-budget batches by the worker
    defaults: dict[str, Any] = {}

    def __init__(self, options: dict[str, Any]):
        self.options = self.check_options(options)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options with defaults filled in, validated without loading a model (the driver does this)."""
        return cls.validate(cls._merge(options))

    @classmethod
    def _merge(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls.defaults))
        if unknown:
            raise TypeError(
                f"task {cls.name!r} got unknown option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(cls.defaults)) or 'none'}"
            )
        return {**cls.defaults, **options}

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        return options

    @classmethod
    def resolve(cls, options: dict[str, Any], model: str) -> dict[str, Any]:
        """Options that depend on the checkpoint, settled once by the driver (recorded in the manifest)."""
        return options

    def schema(self) -> list:
        raise NotImplementedError

    def prepare(self, fields: dict[str, list], errors: list[str | None]) -> tuple[list, list[int]]:
        raise NotImplementedError

    def forward(self, items: list) -> dict[str, Any]:
        raise NotImplementedError

    def columns(self, n: int, valid: np.ndarray, results: dict[str, Any]) -> dict[str, Any]:
        """Arrow arrays of length ``n`` from the valid rows' results (in row order); nulls for the others."""
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        out = {}
        for field in self.schema():
            values = results.get(field.name)
            if pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type):
                out[field.name] = null_lists(values, valid, field.type.value_type)
            else:
                full_list: list[Any] = [None] * n
                if values is not None:
                    for i, v in zip(np.flatnonzero(valid), values):
                        full_list[i] = v.item() if isinstance(v, np.generic) else v
                out[field.name] = pa.array(full_list, type=field.type)
        return out


class EncoderTask(Task):
    """A task on our encoder: loads the checkpoint and tokenizer, checks lengths, runs the packed forward."""

    model_class = "XLMRobertaXLModel"
    defaults: dict[str, Any] = {"truncate": False, "max_length": None}

    def __init__(self, model: str, options: dict[str, Any], dtype=None, device=None, backend: str = "auto"):
        super().__init__(options)
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"model={str(model)!r} is not a checkpoint directory (config.json + weights)")
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        cls = getattr(xlmrxl, self.model_class)
        extra = {"add_pooling_layer": False} if self.model_class == "XLMRobertaXLModel" else {}
        self.model = cls.from_pretrained(str(path), dtype=self.dtype, device=self.device, backend=backend, **extra)
        self.model.eval().requires_grad_(False)
        self.backbone = getattr(self.model, "roberta", self.model)
        self.tokenizer = xlmrxl.XLMRobertaTokenizer.from_pretrained(str(path))
        cfg = self.model.config
        limit = cfg.max_position_embeddings - cfg.pad_token_id - 1  # positions start after the padding index
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max is not None and tok_max < _LARGE:
            limit = min(limit, int(tok_max))
        if self.options["max_length"] is not None:
            limit = min(limit, int(self.options["max_length"]))
        self.max_length = limit
        self._fallback_logged = False

    def prepare(self, fields: dict[str, list], errors: list[str | None]) -> tuple[list, list[int]]:
        """Token ids of each row (None for a bad row; its reason goes into ``errors``), and their lengths."""
        texts = fields["text"]
        good = [i for i, t in enumerate(texts) if errors[i] is None]
        for i in good:
            if not texts[i].strip():
                errors[i] = "empty text"
        good = [i for i in good if errors[i] is None]
        encoded = self.tokenizer([texts[i] for i in good], return_attention_mask=False)["input_ids"] if good else []
        items: list[list[int] | None] = [None] * len(texts)
        long_rows = []
        for i, ids in zip(good, encoded):
            if len(ids) > self.max_length:
                if not self.options["truncate"]:
                    errors[i] = (
                        f"too long: {len(ids)} tokens > the model's maximum {self.max_length}; pass truncate=True "
                        "(CLI --truncate) to cut it"
                    )
                    continue
                long_rows.append(i)
            items[i] = ids
        if long_rows:
            cut = self.tokenizer(
                [texts[i] for i in long_rows], truncation=True, max_length=self.max_length, return_attention_mask=False
            )["input_ids"]
            for i, ids in zip(long_rows, cut):
                items[i] = ids
        self.check(items, errors)
        return items, [len(x) if x is not None else 0 for x in items]

    def check(self, items: list, errors: list[str | None]) -> None:
        """Task-specific row checks after tokenization (fill-mask: a ``<mask>`` is needed)."""

    def packed(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final hidden states of the real tokens (T, H), ``cu_seqlens`` (B+1,) and the packed ids (T,)."""
        ids, mask, cu = right_padded(batch, self.tokenizer.pad_token_id, self.device)
        flat_ids = ids[mask.bool()]
        try:
            out = self.backbone.forward_packed(input_ids=ids, attention_mask=mask)
            return out.last_hidden_state, cu.to(self.device), flat_ids
        except ValueError as exc:  # the fused path cannot take it (e.g. an option it lacks): same maths, padded
            if not self._fallback_logged:
                logger.info("xlmrxl corpus: padded forward instead of forward_packed: %s", exc)
                self._fallback_logged = True
            hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            return hidden[mask.bool()], cu.to(self.device), flat_ids


def right_padded(batch: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows as a right-padded (B, S) batch (positions as each row alone), its 0/1 mask, and host ``cu_seqlens``."""
    lengths = [len(x) for x in batch]
    ids = torch.full((len(batch), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(batch):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, : len(row)] = 1
    cu = torch.zeros(len(batch) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return ids.to(device), mask.to(device), cu


class EmbedTask(EncoderTask):
    name = "embed"
    defaults = {**EncoderTask.defaults, "pooling": AUTO, "normalize": False, "vector_dtype": "float32"}

    def __init__(self, model, options, **kw):
        super().__init__(model, options, **kw)
        # "auto" (xlmrxl.ray.Predictor; corpus.run settles it in the driver): the checkpoint's sentence-transformers
        # pooling, else xlmrxl.pooling.DEFAULT_POOLING (mean)
        self.options = self.resolve(self.options, model)

    @classmethod
    def resolve(cls, options: dict[str, Any], model: str) -> dict[str, Any]:
        pooling, normalize = resolve_pooling(options["pooling"], model, bool(options["normalize"]))
        return {**options, "pooling": pooling, "normalize": normalize}

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        if options["pooling"] not in (AUTO, "cls", "mean"):
            raise ValueError(f"pooling={options['pooling']!r} is not supported; use 'auto', 'cls' or 'mean'")
        if str(options["vector_dtype"]) not in ("float32", "float16"):
            raise ValueError(f"vector_dtype={options['vector_dtype']!r} is not supported; use float32 or float16")
        if options["vector_dtype"] == "float16":
            import pyarrow as pa  # optional extra (xlmrxl[corpus])

            if int(pa.__version__.split(".")[0]) < 15:  # parquet float16 arrived in pyarrow 15
                raise ValueError(
                    f"vector_dtype='float16' needs pyarrow >= 15 to write parquet (pyarrow {pa.__version__} is "
                    "installed); pip install 'pyarrow>=15', or use vector_dtype='float32'"
                )
        return options

    def schema(self) -> list:
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        value = pa.float16() if self.options["vector_dtype"] == "float16" else pa.float32()
        return [pa.field("embedding", pa.list_(value))]

    def forward(self, items: list) -> dict[str, Any]:
        h, cu, _ = self.packed(items)
        if self.options["pooling"] == "cls":
            pooled = h[cu[:-1]].float()
        else:  # each row reduced alone: the same numbers whatever else is in the batch
            bounds = cu.tolist()
            pooled = torch.stack([h[s:e].float().mean(0) for s, e in zip(bounds[:-1], bounds[1:])])
        if self.options["normalize"]:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        vec = pooled.cpu().numpy()
        return {"embedding": vec.astype(np.float16) if self.options["vector_dtype"] == "float16" else vec}


class ClassifyTask(EncoderTask):
    name = "classify"
    model_class = "XLMRobertaXLForSequenceClassification"

    def __init__(self, model, options, **kw):
        super().__init__(model, options, **kw)
        cfg = self.model.config
        self.labels = [cfg.id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
        multi = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1
        self._probs: Callable[[torch.Tensor], torch.Tensor] = (
            torch.sigmoid if multi else (lambda x: torch.softmax(x, dim=-1))
        )

    def schema(self) -> list:
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        return [
            pa.field("logits", pa.list_(pa.float32())),
            pa.field("probabilities", pa.list_(pa.float32())),
            pa.field("label_id", pa.int32()),
            pa.field("label", pa.string()),
        ]

    def forward(self, items: list) -> dict[str, Any]:
        h, cu, _ = self.packed(items)
        logits = self.model.classifier(h[cu[:-1]].unsqueeze(1)).float()  # the head reads position 0: the <s> state
        probs = self._probs(logits)
        label_id = logits.argmax(dim=-1).cpu().numpy().astype(np.int32)
        return {
            "logits": logits.cpu().numpy(),
            "probabilities": probs.cpu().numpy(),
            "label_id": list(label_id),
            "label": [self.labels[i] for i in label_id],
        }


class FillMaskTask(EncoderTask):
    name = "fill-mask"
    model_class = "XLMRobertaXLForMaskedLM"
    defaults = {**EncoderTask.defaults, "top_k": 5}

    @classmethod
    def validate(cls, options: dict[str, Any]) -> dict[str, Any]:
        if int(options["top_k"]) < 1:
            raise ValueError(f"top_k={options['top_k']!r} must be >= 1")
        return options

    def __init__(self, model, options, **kw):
        super().__init__(model, options, **kw)
        self._token_str: dict[int, str] = {}

    def schema(self) -> list:
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        pred = pa.struct([("token", pa.int32()), ("token_str", pa.string()), ("score", pa.float32())])
        return [pa.field("predictions", pa.list_(pa.list_(pred)))]

    def check(self, items: list, errors: list[str | None]) -> None:
        mask_id = self.tokenizer.mask_token_id
        for i, ids in enumerate(items):
            if ids is not None and mask_id not in ids:
                errors[i] = f"no {self.tokenizer.mask_token} token (after truncation, if any)"
                items[i] = None

    def forward(self, items: list) -> dict[str, Any]:
        h, cu, flat = self.packed(items)
        where = (flat == self.tokenizer.mask_token_id).nonzero().squeeze(1)
        logits = self.model.lm_head(h[where])  # the LM head at the masks only
        probs = logits.float().softmax(dim=-1)
        n_real = len(self.tokenizer)  # padded vocabulary rows cannot be decoded
        k = min(int(self.options["top_k"]), n_real)
        values, picks = probs[:, :n_real].topk(k, dim=-1)
        row_of = (torch.searchsorted(cu[1:], where, right=True)).tolist()
        values, picks = values.cpu().tolist(), picks.cpu().tolist()
        out: list[list[list[dict]]] = [[] for _ in items]
        for r, vals, toks in zip(row_of, values, picks):
            out[r].append([{"token": t, "token_str": self._decode(t), "score": v} for t, v in zip(toks, vals)])
        return {"predictions": out}

    def _decode(self, token: int) -> str:
        s = self._token_str.get(token)
        if s is None:
            s = self._token_str[token] = self.tokenizer.decode([token])
        return s


class CometTask(Task):
    """COMET scoring through ``xlmrxl.comet.load`` (accelerated) and COMET's own ``predict`` batching."""

    name = "comet"
    roles = ("src", "mt")
    optional_roles = ("ref",)
    packs = False
    defaults = {"batch_size": 16}

    def __init__(self, model: str, options: dict[str, Any], dtype=None, device=None, backend: str = "auto"):
        super().__init__(options)
        require_comet()
        import xlmrxl.comet  # the COMET client: needs the optional unbabel-comet package

        self.device = parse_device(device)
        self.model = xlmrxl.comet.load(model, dtype=dtype, device=self.device)
        self.xcomet = type(self.model).__name__ == "XCOMETMetric"
        segments = getattr(getattr(self.model, "hparams", None), "input_segments", None)
        name = type(self.model).__name__
        self.needs_ref = name in ("RegressionMetric", "RankingMetric") or (
            segments is not None and "ref" in segments and name != "XCOMETMetric" and name != "UnifiedMetric"
        )

    def schema(self) -> list:
        import pyarrow as pa  # optional extra (xlmrxl[corpus])

        fields = [pa.field("score", pa.float64())]
        if self.xcomet:
            span = pa.struct(
                [
                    ("text", pa.string()),
                    ("start", pa.int64()),
                    ("end", pa.int64()),
                    ("severity", pa.string()),
                    ("confidence", pa.float64()),
                ]
            )
            fields.append(pa.field("error_spans", pa.list_(span)))
        return fields

    def prepare(self, fields: dict[str, list], errors: list[str | None]) -> tuple[list, list[int]]:
        n = len(fields["src"])
        items: list[dict | None] = [None] * n
        refs = fields.get("ref")
        for i in range(n):
            if errors[i] is not None:
                continue
            sample = {"src": fields["src"][i], "mt": fields["mt"][i]}
            if refs is not None and refs[i] is not None:
                sample["ref"] = refs[i]
            elif self.needs_ref:
                errors[i] = f"{type(self.model).__name__} needs a reference: the ref column is missing or empty"
                continue
            if not sample["src"].strip() or not sample["mt"].strip():
                errors[i] = "empty src or mt"
                continue
            items[i] = sample
        return items, [len(x["src"]) + len(x["mt"]) if x else 0 for x in items]

    def forward(self, items: list) -> dict[str, Any]:
        gpus = 1 if self.device.type == "cuda" else 0
        out = self.model.predict(items, batch_size=int(self.options["batch_size"]), gpus=gpus, progress_bar=False)
        result: dict[str, Any] = {"score": [float(s) for s in out.scores]}
        if self.xcomet:
            spans = getattr(getattr(out, "metadata", None), "error_spans", None) or [[] for _ in items]
            result["error_spans"] = [
                [
                    {
                        "text": s.get("text"),
                        "start": s.get("start"),
                        "end": s.get("end"),
                        "severity": s.get("severity"),
                        "confidence": s.get("confidence"),
                    }
                    for s in row
                ]
                for row in spans
            ]
        return result


def role_columns(task_cls: type[Task], text_column: str, columns: dict[str, str] | None) -> dict[str, str]:
    """The task's input roles mapped to input column names (``text`` -> ``text_column``, then ``columns``)."""
    cols = {r: r for r in task_cls.roles + task_cls.optional_roles}
    if "text" in cols:
        cols["text"] = text_column
    if columns:
        unknown = sorted(set(columns) - set(cols))
        if unknown:
            raise ValueError(
                f"columns= names role(s) {unknown} that task {task_cls.name!r} does not take; its roles are "
                f"{sorted(cols)} (map each to an input column)"
            )
        cols.update(columns)
    return cols


def require_comet() -> None:
    """A clear error when the COMET client cannot run here."""
    try:
        import comet  # noqa: F401  (unbabel-comet: an optional client, not in the main environment)
    except ImportError as exc:
        raise ImportError(
            "the comet task needs unbabel-comet (pip install 'unbabel-comet>=2.2', in an environment with "
            "transformers < 5: see the README's COMET section)"
        ) from exc


TASK_CLASSES: dict[str, type[Task]] = {
    "embed": EmbedTask,
    "classify": ClassifyTask,
    "fill-mask": FillMaskTask,
    "comet": CometTask,
}


def task_class(task: str) -> type[Task]:
    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}; xlmrxl corpus runs {', '.join(TASKS)}")
    return TASK_CLASSES[task]


def load_task(task: str, model: str, options: dict[str, Any], dtype=None, device=None, backend="auto") -> Task:
    """The task object with its model loaded."""
    return task_class(task)(model, options, dtype=dtype, device=device, backend=backend)
