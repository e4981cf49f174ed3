"""Model runners of ``xlmrxl serve``: one loaded model per device, tokenizing and computing rows with the offline code.

A runner turns request inputs into rows (token ids and their count, checked against the limits) and computes a
batch of rows from any number of requests on the padding-free path (``forward_packed``: real tokens only), so a
row's numbers do not depend on what else is in its batch. Per-row options that do not change the forward
(``normalize``, ``raw_scores``, ``top_k``) are applied to each row alone after it.

- ``embed``: pooled states (``cls`` or ``mean`` over real tokens, as ``xlmrxl.pipeline("feature-extraction")`` and
  sentence-transformers' ``Pooling``), L2-normalised on request.
- ``classify`` / ``rerank``: the classification head's logits at ``<s>`` (rerank: of the pair ``query, text``);
  scores = softmax (sigmoid for one label or ``multi_label_classification``), or the raw logits.
- ``fill-mask``: the LM head at the ``<mask>`` positions only, top-k of the float32 softmax (as the pipeline).
- ``comet``: ``xlmrxl.comet.load`` and COMET's own ``predict`` on the batch's segments.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

import xlmrxl
from xlmrxl.corpus.tasks import CometTask, parse_device, parse_dtype, right_padded

logger = logging.getLogger("xlmrxl")

TASKS = ("embed", "classify", "rerank", "fill-mask", "comet")
_LARGE = int(1e20)
_CLASSES = {
    "embed": "XLMRobertaXLModel",
    "classify": "XLMRobertaXLForSequenceClassification",
    "rerank": "XLMRobertaXLForSequenceClassification",
    "fill-mask": "XLMRobertaXLForMaskedLM",
}


class InputError(ValueError):
    """A request input the server refuses (status 413 for too long / too many, 422 otherwise)."""

    def __init__(self, message: str, status: int = 422, error_type: str = "validation") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclasses.dataclass
class Row:
    """One unit of model work: token ids (a COMET sample for comet), its token count and per-row options."""

    item: Any
    tokens: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_comet_dir(path: Path) -> bool:
    return (
        (path / "hparams.yaml").is_file() or (path / "checkpoints" / "model.ckpt").is_file() or path.suffix == ".ckpt"
    )


def infer_task(model_dir: str | Path) -> str:
    """The task a checkpoint is served for: COMET files -> comet, else its config's architecture."""
    path = Path(model_dir)
    if is_comet_dir(path):
        return "comet"
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} holds no config.json (nor COMET's hparams.yaml): not a checkpoint")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    arch = (cfg.get("architectures") or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        return "rerank" if int(cfg.get("num_labels", len(cfg.get("id2label") or {}) or 2)) == 1 else "classify"
    if arch.endswith("ForMaskedLM") and not (path / "modules.json").is_file():
        return "fill-mask"
    return "embed"


def sentence_transformers_defaults(model_dir: str | Path) -> dict[str, Any]:
    """Pooling / normalize of a sentence-transformers directory (its Pooling module's config, a Normalize module);
    empty for a plain checkpoint."""
    path = Path(model_dir)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"normalize": any(m.get("type", "").endswith("Normalize") for m in modules)}
    for m in modules:
        cfg_file = path / m.get("path", "") / "config.json"
        if not m.get("type", "").endswith("Pooling") or not cfg_file.is_file():
            continue
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        mode = cfg.get("pooling_mode")  # sentence-transformers 5.x; older ones: one flag per mode
        if mode is None:
            flags = [k[len("pooling_mode_") :] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(flags[0], flags[0]) if len(flags) == 1 else flags
        if mode not in ("cls", "mean"):
            raise ValueError(
                f"{str(path)!r}: sentence-transformers pooling {mode!r} is not served; xlmrxl serve pools cls or mean"
            )
        out["pooling"] = mode
    return out


class Runner:
    """A model on one device; see the module docstring."""

    def __init__(
        self,
        model_dir: str,
        task: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        backend: str = "auto",
        quantization: str | None = None,
        pooling: str = "cls",
        max_input_tokens: int | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not served; use one of {', '.join(TASKS)}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r} is not supported; use 'cls' or 'mean'")
        self.task, self.pooling = task, pooling
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        if task == "comet":
            self.comet = CometTask(model_dir, {}, dtype=dtype, device=self.device, backend=backend)
            self.model, self.tokenizer, self.max_input_tokens = self.comet.model, None, max_input_tokens or 512
            return
        cls = getattr(xlmrxl, _CLASSES[task])
        extra = {"add_pooling_layer": False} if task == "embed" else {}
        self.model = cls.from_pretrained(
            model_dir, dtype=self.dtype, device=self.device, backend=backend, quantization=quantization, **extra
        )
        self.model.eval().requires_grad_(False)
        self.backbone = getattr(self.model, "roberta", self.model)
        self.tokenizer = xlmrxl.XLMRobertaTokenizer.from_pretrained(model_dir)
        self.left_tokenizer = copy.copy(self.tokenizer)
        self.left_tokenizer.truncation_side = "left"
        self.tokenizer.truncation_side = "right"
        cfg = self.model.config
        limit = cfg.max_position_embeddings - cfg.pad_token_id - 1  # positions start after the padding index
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max is not None and tok_max < _LARGE:
            limit = min(limit, int(tok_max))
        if max_input_tokens is not None:
            if max_input_tokens < 3:
                raise ValueError(f"max_input_tokens={max_input_tokens} is too small; use at least 3")
            limit = min(limit, int(max_input_tokens))
        self.max_input_tokens = limit
        if task in ("classify", "rerank"):
            self.labels = [cfg.id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
            self.sigmoid = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1

    # -- inputs -> rows -------------------------------------------------------------------------------------------
    def rows(self, texts: list, truncate: bool, direction: str = "right", pairs: list | None = None) -> list[Row]:
        """Token ids of each text (or pair), checked against ``max_input_tokens`` (cut when ``truncate``)."""
        tok = self.left_tokenizer if direction == "left" else self.tokenizer
        if pairs is None:
            ids = tok(texts, return_attention_mask=False)["input_ids"]
        else:
            ids = tok(texts, pairs, return_attention_mask=False)["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > self.max_input_tokens]
        if long and not truncate:
            i = long[0]
            raise InputError(
                f"input {i} has {len(ids[i])} tokens, more than the limit {self.max_input_tokens}; send "
                "truncate=true (or start the server with --auto-truncate) to cut it",
                status=413,
            )
        if long:
            cut_in = [texts[i] for i in long]
            kw = {"truncation": True, "max_length": self.max_input_tokens, "return_attention_mask": False}
            cut = tok(cut_in, [pairs[i] for i in long], **kw) if pairs is not None else tok(cut_in, **kw)
            for i, x in zip(long, cut["input_ids"]):
                ids[i] = x
        return [Row(x, len(x)) for x in ids]

    def id_rows(self, ids: list[list[int]], truncate: bool) -> list[Row]:
        """Rows from token ids given by the client (OpenAI's ``input`` as ids), checked against the vocabulary."""
        n = len(self.tokenizer)
        out = []
        for i, x in enumerate(ids):
            bad = [t for t in x if not 0 <= t < n]
            if bad:
                raise InputError(f"input {i} holds token id {bad[0]}, outside the vocabulary [0, {n})")
            if len(x) > self.max_input_tokens:
                if not truncate:
                    raise InputError(
                        f"input {i} has {len(x)} tokens, more than the limit {self.max_input_tokens}", status=413
                    )
                x = x[: self.max_input_tokens]
            out.append(Row(list(x), len(x)))
        return out

    # -- a batch of rows --------------------------------------------------------------------------------------------
    def packed(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final hidden states of the real tokens (T, H), ``cu_seqlens`` (B+1,) and the packed ids (T,)."""
        ids, mask, cu = right_padded(batch, self.tokenizer.pad_token_id, self.device)
        out = self.backbone.forward_packed(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, cu.to(self.device), ids[mask.bool()]

    @torch.inference_mode()
    def forward(self, rows: list[Row]) -> list[Any]:
        """Each row's result (in order): see the module docstring."""
        if self.task == "comet":
            res = self.comet.forward([r.item for r in rows])
            spans = res.get("error_spans")
            return [{"score": s, "error_spans": spans[i] if spans else None} for i, s in enumerate(res["score"])]
        h, cu, flat = self.packed([r.item for r in rows])
        if self.task == "embed":
            if self.pooling == "cls":
                pooled = h[cu[:-1]].float()
            else:  # each row reduced alone: the same numbers whatever else is in the batch
                bounds = cu.tolist()
                pooled = torch.stack([h[s:e].float().mean(0) for s, e in zip(bounds[:-1], bounds[1:])])
            out = []
            for r, vec in zip(rows, pooled):
                if r.options.get("normalize"):
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                out.append(vec.cpu().numpy())
            return out
        if self.task in ("classify", "rerank"):
            logits = self.model.classifier(h[cu[:-1]].unsqueeze(1)).float()  # the head reads the <s> state
            probs = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
            return [(lg if r.options.get("raw_scores") else p).cpu().tolist() for r, lg, p in zip(rows, logits, probs)]
        return self._fill_mask(rows, h, cu, flat)

    def _fill_mask(self, rows: list[Row], h: torch.Tensor, cu: torch.Tensor, flat: torch.Tensor) -> list[Any]:
        where = (flat == self.tokenizer.mask_token_id).nonzero().squeeze(1)
        out: list[list[list[dict]]] = [[] for _ in rows]
        if where.numel() == 0:
            return out
        probs = self.model.lm_head(h[where]).float().softmax(dim=-1)
        n_real = len(self.tokenizer)  # padded vocabulary rows cannot be decoded
        k = min(max(int(r.options.get("top_k", 5)) for r in rows), n_real)
        values, picks = probs[:, :n_real].topk(k, dim=-1)
        row_of = torch.searchsorted(cu[1:], where, right=True).tolist()
        for r, vals, toks in zip(row_of, values.cpu().tolist(), picks.cpu().tolist()):
            kk = int(rows[r].options.get("top_k", 5))
            out[r].append(
                [
                    {"token": t, "token_str": self.tokenizer.decode([t]), "score": v}
                    for t, v in zip(toks[:kk], vals[:kk])
                ]
            )
        return out

    def warm_up(self, max_batch_tokens: int = 0) -> None:
        """Batches through the model before the server says it is ready: one small one, and on a GPU one per
        4x step of real tokens up to ``max_batch_tokens`` (the measured kernel choice and CUDA graphs of those
        sizes are settled before the first client waits on them)."""
        if self.task == "comet":
            self.forward([Row({"src": "Hello.", "mt": "Hallo.", "ref": "Hallo."}, 4)])
            return
        text = "Hello world." + (f" {self.tokenizer.mask_token}" if self.task == "fill-mask" else "")
        self.forward(self.rows([text], truncate=True))
        tokens = 64
        while self.device.type == "cuda" and tokens <= max_batch_tokens:
            n = min(self.max_input_tokens, tokens)
            tok = self.tokenizer
            ids = [tok.bos_token_id] + [tok.unk_token_id] * (n - 2) + [tok.eos_token_id]
            self.forward([Row(ids, n) for _ in range(max(1, tokens // n))])
            tokens *= 4
