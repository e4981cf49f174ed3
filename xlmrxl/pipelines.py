"""``xlmrxl.pipeline``: fill-mask and feature-extraction on XLM-RoBERTa-XL / XXL, shaped like transformers' pipelines.

    fill = xlmrxl.pipeline("fill-mask", model="/path/to/xlm-roberta-xl", dtype="bfloat16")
    fill("Paris is the <mask> of France.")            # -> [{score, token, token_str, sequence}, ...] (top_k=5)
    embed = xlmrxl.pipeline("feature-extraction", model="/path/to/xlm-roberta-xl", pooling="mean")
    embed(["one sentence", "another"])                # -> (2, hidden) float32 tensor

Contract
--------
- ``pipeline(task, model=dir_or_model, tokenizer=None, device=None, dtype=None, backend="auto", **kw)``.
  ``model`` is a checkpoint directory (loaded with our ``from_pretrained``; the tokenizer is read from the same
  directory unless given) or a model instance: ours, or transformers' XLM-RoBERTa-XL classes (``.roberta`` and
  ``.lm_head`` for fill-mask; a base model or any task model for feature-extraction). ``device=None`` is the CPU
  (``"auto"``: CUDA when usable; see ``xlmrxl.parsing``); ``dtype=None`` keeps float32 (``"bfloat16"``,
  ``torch.float16``, ... accepted; ``"auto"``: the checkpoint's dtype); ``backend`` is passed to the model (``None``
  leaves a given model's backend alone). Other keywords become call defaults (``top_k``, ``pooling``, ``batch_size``,
  ...).
- Inputs are batched (``batch_size``, default 8; sorted by length to cut padding, results in input order) with a
  tqdm progress bar on long lists (``progress=None``: shown for 64+ inputs when stderr is a terminal or
  ``XLMRXL_PROGRESS=on``; ``xlmrxl.progress``).
- ``"fill-mask"``: the encoder runs once per batch, then the LM head runs **only at the ``<mask>`` positions**
  (hidden states gathered there first, so the (tokens x vocab) logits are never built). Scores are the softmax over
  all vocabulary columns, computed in float32 (transformers uses the model dtype; identical in fp32).
  Candidates are limited to ids the tokenizer can decode (the real checkpoints have 250880 rows for 250002 tokens).
  Output per input, as transformers: one ``<mask>`` -> a list of ``top_k`` dicts ``{score, token, token_str,
  sequence}`` (``sequence`` decoded with special tokens skipped); several masks -> one such list per mask, each
  ``sequence`` filling only that mask and decoded with special tokens kept. A string input gives its result; a
  list gives a list of results, except a list of one, which is unwrapped (as transformers does). ``targets=``
  (a word or a list) restricts the candidates, as transformers does (a word outside the vocabulary is replaced by
  its first token, with a warning). An input without ``<mask>`` is an error naming it.
- ``"feature-extraction"``: ``pooling=None`` (the default, as transformers' pipeline) gives each input's token
  states, a float32 tensor (real tokens, H) (``<s>``/``</s>`` included); ``"cls"`` the ``<s>`` state; ``"mean"`` the
  mean over real tokens only (the attention mask); ``"auto"``: the pooled default of every xlmrxl surface
  (``xlmrxl.pooling``: the checkpoint's sentence-transformers pooling, else mean), as ``xlmrxl embed`` and
  ``xlmrxl corpus embed`` use. ``normalize=True`` L2-normalises. Pooled results of a list come stacked as one
  (N, H) tensor; token states as a list of tensors. Tensors are returned on the CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .modeling import XLMRobertaXLForMaskedLM, XLMRobertaXLModel
from .parsing import parse_device, parse_dtype
from .pooling import AUTO, resolve_pooling
from .progress import progress_bar
from .progress import resolve as resolve_progress
from .tokenizer import XLMRobertaTokenizer

logger = logging.getLogger("xlmrxl")

TASKS = ("fill-mask", "feature-extraction")
POOLINGS = (None, "cls", "mean", AUTO)
_PROGRESS_MIN_INPUTS = 64


class Pipeline:
    """Shared parts: model/tokenizer, batching, progress bar, call-time defaults."""

    task = ""
    _call_keys: tuple = ("batch_size", "progress")

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device, **defaults: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        unknown = sorted(set(defaults) - set(self._call_keys))
        if unknown:
            raise TypeError(
                f"{self.task} pipeline got unknown option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(self._call_keys)}"
            )
        self.defaults = {"batch_size": 8, "progress": None}
        self.defaults.update(defaults)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, device={self.device})"

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(kwargs) - set(self._call_keys))
        if unknown:
            raise TypeError(
                f"{self.task} pipeline got unknown option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(self._call_keys)}"
            )
        opts = dict(self.defaults)
        opts.update(kwargs)
        bs = opts["batch_size"]
        if not isinstance(bs, int) or bs < 1:
            raise ValueError(f"batch_size={bs!r} must be a positive integer")
        return opts

    @staticmethod
    def _as_list(inputs: Any) -> tuple:
        if isinstance(inputs, str):
            return [inputs], True
        if isinstance(inputs, (list, tuple)):
            bad = next(((i, t) for i, t in enumerate(inputs) if not isinstance(t, str)), None)
            if bad is None:
                return list(inputs), False
            i, t = bad
            raise TypeError(
                f"inputs[{i}] is {type(t).__name__} ({t!r:.60}), not a string; every input must be a string"
            )
        raise TypeError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")

    def _batches(self, texts: list[str], batch_size: int, progress: Any):
        """Yield (indices, encoding) batches, longest inputs first (less padding), with an optional progress bar."""
        ids = self.tokenizer(texts, return_attention_mask=False)["input_ids"]  # tokenized once
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        pad = self.tokenizer.pad_token_id
        show = progress if progress is not None else (len(texts) >= _PROGRESS_MIN_INPUTS and resolve_progress(None))
        bar = progress_bar(len(texts), self.task, "input", True) if show else None
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = len(ids[idx[0]])  # longest first, so the first is the widest
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for b, i in enumerate(idx):  # right padding, as the tokenizer does
                    input_ids[b, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    mask[b, : len(ids[i])] = 1
                yield idx, {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()

    def _encode(self, enc) -> torch.Tensor:
        """Last hidden state (B, S, H) of the backbone."""
        backbone = getattr(self.model, "roberta", self.model)  # a task model's backbone, or the base model itself
        out = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    _call_keys = ("batch_size", "progress", "top_k", "targets")

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device | str | None, **defaults: Any) -> None:
        defaults.setdefault("top_k", 5)
        super().__init__(model, tokenizer, device, **defaults)
        if not hasattr(model, "lm_head") or not hasattr(model, "roberta"):
            raise TypeError(
                f"fill-mask needs a masked-LM model (with .roberta and .lm_head), got "
                f"{type(model).__name__}; load XLMRobertaXLForMaskedLM"
            )

    def _target_ids(self, targets) -> torch.Tensor | None:
        if targets is None:
            return None
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.get_vocab()
        ids = []
        for t in targets:
            tid = vocab.get(t)
            if tid is None:
                pieces = self.tokenizer(t, add_special_tokens=False, return_attention_mask=False)["input_ids"]
                if not pieces:
                    logger.warning("xlmrxl: fill-mask target %r has no token; ignoring it", t)
                    continue
                tid = pieces[0]
                logger.warning(
                    "xlmrxl: fill-mask target %r is not in the vocabulary; using its first token %r",
                    t,
                    self.tokenizer.convert_ids_to_tokens(tid),
                )
            ids.append(tid)
        ids = sorted(set(ids))
        if not ids:
            raise ValueError(f"none of the targets {list(targets)!r} maps to a token; pass at least one word")
        return torch.tensor(ids, dtype=torch.long)

    @torch.inference_mode()
    def __call__(self, inputs: str | Sequence[str], **kwargs: Any) -> Any:
        """Fill the ``<mask>`` of each input; see the module docstring for the output shape."""
        opts = self._options(kwargs)
        texts, single = self._as_list(inputs)
        top_k = int(opts["top_k"])
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        mask_id = self.tokenizer.mask_token_id
        targets = self._target_ids(opts.get("targets"))
        n_real = len(self.tokenizer)  # ids past the tokenizer (padded vocab rows) cannot be decoded
        results: list[Any] = [None] * len(texts)
        for idx, enc in self._batches(texts, opts["batch_size"], opts["progress"]):
            ids = enc["input_ids"]
            has_mask = (ids == mask_id).any(dim=1)
            if not bool(has_mask.all()):
                bad = idx[int((~has_mask).nonzero()[0, 0])]
                raise ValueError(
                    f"fill-mask inputs[{bad}] has no {self.tokenizer.mask_token} token: "
                    f"{texts[bad]!r}; put {self.tokenizer.mask_token} where a word should be predicted"
                )
            hidden = self._encode(enc)
            rows, cols = (ids == mask_id).nonzero(as_tuple=True)
            logits = self.model.lm_head(hidden[rows, cols])  # (masks, V): the LM head at the masks only
            probs = logits.float().softmax(dim=-1)
            if targets is not None:
                cand = targets.to(probs.device)
                values, picks = probs[:, cand].topk(min(top_k, cand.numel()), dim=-1)
                picks = cand[picks]
            else:
                values, picks = probs[:, :n_real].topk(min(top_k, n_real), dim=-1)
            values, picks = values.cpu().tolist(), picks.cpu().tolist()
            rows, cols = rows.cpu().tolist(), cols.cpu().tolist()
            ids_cpu = ids.cpu()
            mask_cpu = enc["attention_mask"].cpu()
            for b, i in enumerate(idx):
                where = [m for m, r in enumerate(rows) if r == b]
                real = ids_cpu[b][mask_cpu[b].bool()]
                results[i] = self._format(
                    real, [cols[m] for m in where], [values[m] for m in where], [picks[m] for m in where]
                )
        # as transformers' pipeline: a string, or a list holding one string, gives that input's result alone
        return results[0] if single or len(results) == 1 else results

    def _format(self, real_ids: torch.Tensor, positions, values: torch.Tensor, picks):
        tok = self.tokenizer
        one = len(positions) == 1
        per_mask = []
        for pos, vals, preds in zip(positions, values, picks):
            row = []
            for v, p in zip(vals, preds):
                seq = real_ids.clone()
                seq[pos] = p
                seq = seq[seq != tok.pad_token_id]
                row.append(
                    {
                        "score": float(v),
                        "token": int(p),
                        "token_str": tok.decode([p]),
                        "sequence": tok.decode(seq, skip_special_tokens=one),
                    }
                )
            per_mask.append(row)
        return per_mask[0] if one else per_mask


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    _call_keys = ("batch_size", "progress", "pooling", "normalize")

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device | str | None, **defaults: Any) -> None:
        defaults.setdefault("pooling", None)
        defaults.setdefault("normalize", False)
        super().__init__(model, tokenizer, device, **defaults)
        if not hasattr(model, "roberta") and not hasattr(model, "encoder"):
            raise TypeError(f"feature-extraction needs an XLM-RoBERTa-XL model, got {type(model).__name__}")
        self.checkpoint: str | None = None  # the directory the model came from: its pooling config, if any

    @torch.inference_mode()
    def __call__(self, inputs: str | Sequence[str], **kwargs: Any) -> Any:
        """Embeddings of each input; see the module docstring for the shapes."""
        opts = self._options(kwargs)
        pooling = opts["pooling"]
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not valid; use None (token states), 'auto', 'cls' or 'mean'")
        if pooling == AUTO:
            pooling, opts["normalize"] = resolve_pooling(AUTO, self.checkpoint, bool(opts["normalize"]))
        texts, single = self._as_list(inputs)
        results: list[torch.Tensor | None] = [None] * len(texts)
        for idx, enc in self._batches(texts, opts["batch_size"], opts["progress"]):
            hidden = self._encode(enc).float()
            mask = enc["attention_mask"].to(hidden.dtype)
            if pooling == "cls":
                out = hidden[:, 0]
            elif pooling == "mean":
                out = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            else:
                out = hidden
            if opts["normalize"]:
                out = torch.nn.functional.normalize(out, dim=-1)
            out = out.cpu()
            keep = enc["attention_mask"].bool().cpu()
            for b, i in enumerate(idx):
                results[i] = out[b] if pooling is not None else out[b][keep[b]]
        if single:
            return results[0]
        if pooling is not None:
            if not results:
                return torch.empty(0, getattr(getattr(self.model, "config", None), "hidden_size", 0))
            return torch.stack(results)
        return results


_PIPELINES = {"fill-mask": FillMaskPipeline, "feature-extraction": FeatureExtractionPipeline}


def pipeline(
    task: str,
    model: str | os.PathLike | torch.nn.Module | None = None,
    tokenizer: Any = None,
    device: None | str | int | torch.device = None,
    dtype: None | str | torch.dtype = None,
    backend: str | None = "auto",
    **kwargs: Any,
) -> Pipeline:
    """Build a ``"fill-mask"`` or ``"feature-extraction"`` pipeline; see the module docstring."""
    if task not in _PIPELINES:
        raise ValueError(f"unknown task {task!r}; xlmrxl.pipeline supports {', '.join(TASKS)}")
    if model is None:
        raise ValueError(
            "pass model= a checkpoint directory (e.g. a local copy of facebook/xlm-roberta-xl) or a "
            "model instance; there is no default model"
        )
    dev = parse_device(device)
    torch_dtype = parse_dtype(dtype)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(
                f"model={str(model)!r} is not a directory; pass a checkpoint directory holding "
                "config.json and the weights"
            )
        if task == "fill-mask":
            net = XLMRobertaXLForMaskedLM.from_pretrained(str(path), dtype=torch_dtype, device=dev, backend=backend)
        else:
            net = XLMRobertaXLModel.from_pretrained(
                str(path), dtype=torch_dtype, device=dev, backend=backend, add_pooling_layer=False
            )
        if tokenizer is None:
            tokenizer = path
    elif isinstance(model, torch.nn.Module):
        net = model
        cast = None if torch_dtype == "auto" else torch_dtype  # "auto": the instance keeps its dtype
        if device is not None or cast is not None:
            net = net.to(device=dev if device is not None else None, dtype=cast)
        try:
            dev = next(net.parameters()).device
        except StopIteration:
            pass
        if backend is not None and hasattr(net, "set_backend"):
            net.set_backend(backend)
        if tokenizer is None:
            raise ValueError(
                "model is an instance, so pass tokenizer= too (an XLMRobertaTokenizer or the "
                "directory holding sentencepiece.bpe.model)"
            )
    else:
        raise TypeError(f"model must be a directory or a torch.nn.Module, got {type(model).__name__}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = XLMRobertaTokenizer.from_pretrained(tokenizer)
    net.eval()
    pipe = _PIPELINES[task](net, tokenizer, dev, **kwargs)
    if isinstance(pipe, FeatureExtractionPipeline) and isinstance(model, (str, os.PathLike)):
        pipe.checkpoint = str(model)
        if pipe.defaults["pooling"] == AUTO:  # say the choice now, not at the first call
            resolve_pooling(AUTO, pipe.checkpoint, bool(pipe.defaults["normalize"]))
    return pipe
