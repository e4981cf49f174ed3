"""Calibration texts for GPTQ and the quality report: read them, find the tokenizer, turn them into real token ids.

``calibration`` is a text file (one text per line, empty lines skipped) or a list of strings. The tokenizer is the
one passed (an ``XLMRobertaTokenizer``, a transformers tokenizer, or a directory holding ``sentencepiece.bpe.model``),
else the model's own, found beside the checkpoint it was loaded from (``config.name_or_path``). Each text becomes a
1-D tensor of its real token ids (``<s> ... </s>``, truncated to the model's positions): no padding ever enters a
Hessian or a cosine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..tokenizer import XLMRobertaTokenizer


def load_texts(calibration: str | os.PathLike | Sequence[str]) -> list[str]:
    """The calibration texts, stripped, empty ones dropped; a clear error for a missing, empty or wrong input."""
    if isinstance(calibration, (str, os.PathLike)):
        path = Path(calibration)
        if not path.is_file():
            raise FileNotFoundError(
                f"calibration file {str(path)!r} does not exist (or is not a file); pass a UTF-8 text file with "
                "one text per line, or a list of strings"
            )
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"calibration file {str(path)!r} is not UTF-8 text ({exc}); pass a text file with one text per line"
            ) from None
        texts = [t.strip() for t in lines if t.strip()]
        if not texts:
            raise ValueError(
                f"calibration file {str(path)!r} holds no text (it is empty or only blank lines); "
                "put one calibration text per line (a few hundred sentences like the ones you will score)"
            )
        return texts
    if isinstance(calibration, (list, tuple)):
        bad = [i for i, t in enumerate(calibration) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"calibration list item {bad[0]} is a {type(calibration[bad[0]]).__name__}, not a string; "
                "pass a list of texts"
            )
        texts = [t.strip() for t in calibration if t.strip()]
        if not texts:
            raise ValueError(
                "the calibration list is empty (or holds only blank strings); pass some texts like the ones you "
                "will score, or a text file with one per line"
            )
        return texts
    raise TypeError(f"calibration must be a text file path or a list of strings, got {type(calibration).__name__}")


def find_tokenizer(model: nn.Module, tokenizer: Any = None) -> Any:
    """``tokenizer`` itself, or loaded from a directory, or the model's own beside its checkpoint."""

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a tokenizer or a directory, got {type(tokenizer).__name__}")
        return tokenizer
    where = tokenizer
    if where is None:
        where = getattr(getattr(model, "config", None), "name_or_path", "") or None
    if where is not None and (Path(where) / "sentencepiece.bpe.model").is_file():
        return XLMRobertaTokenizer.from_pretrained(where)
    raise ValueError(
        "calibration texts need the model's tokenizer, and "
        + (
            f"{str(where)!r} holds no sentencepiece.bpe.model"
            if where is not None
            else "this model was not loaded from a checkpoint directory"
        )
        + "; pass tokenizer= (an XLMRobertaTokenizer or the directory holding sentencepiece.bpe.model)"
    )


def encode(model: nn.Module, texts: Sequence[str], tokenizer: Any) -> list[torch.Tensor]:
    """Real token ids of each text, a 1-D int64 tensor each, truncated to what the model's positions allow."""
    config = model.config
    max_len = int(getattr(config, "max_position_embeddings", 514)) - int(getattr(config, "pad_token_id", 1)) - 1
    ids = tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
    out = [torch.as_tensor(x, dtype=torch.long) for x in ids]
    vocab = int(config.vocab_size)
    for i, t in enumerate(out):
        if t.numel() == 0:
            raise ValueError(f"calibration text {i} ({texts[i][:40]!r}) has no tokens")
        if int(t.max()) >= vocab:
            raise ValueError(
                f"calibration text {i} has token id {int(t.max())} >= the model's vocab_size {vocab}: the tokenizer "
                "does not belong to this model; pass the model's own tokenizer"
            )
    return out


def batches(seqs: Sequence[torch.Tensor], batch_size: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(ids, mask)`` batches of sequences sorted by length (little padding), in a fixed order."""
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    out = []
    for b in range(0, len(order), max(1, int(batch_size))):
        chunk = [seqs[i] for i in order[b : b + batch_size]]
        L = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = s
            mask[j, : len(s)] = 1
        out.append((ids, mask))
    return out
