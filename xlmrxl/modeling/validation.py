"""The backbone's input checks: shapes and dtypes on the host, every data-dependent check read back in one sync.

``validate_inputs(config, model_dtype, Inputs(...))`` raises a ValueError / TypeError naming the bad value and the
fix, and returns ``(mask_is_full, encoder_mask_is_full, first_padded)`` learned from the same single device sync
(``first_padded``: some row's position 0 is padding, i.e. the batch is left-padded); ``(None, None, None)`` while
tracing or compiling (nothing is read back then).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch

from ..backend import log_once
from ..masks import non_binary_mask_error

__all__ = ["Inputs", "validate_inputs"]


class Inputs(NamedTuple):
    """The backbone's inputs that validation reads."""

    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor | None
    token_type_ids: torch.Tensor | None
    position_ids: torch.Tensor | None
    encoder_hidden_states: torch.Tensor | None
    encoder_attention_mask: torch.Tensor | None
    past_length: int


def validate_inputs(c: Any, model_dtype: torch.dtype, x: Inputs) -> tuple[bool | None, bool | None, bool | None]:
    """Check ``x`` against config ``c`` (see the module docstring)."""
    shape = _input_shape(c, x)
    _check_shapes(c, x, shape)
    enc_mask = _encoder_mask(c, x)
    _check_embeds_dtype(x.inputs_embeds, model_dtype)
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return None, None, None
    values, count_rows = _read_flags(c, x, shape, enc_mask)
    bad_ids, bad_tt, bad_pos, mask_full, enc_full, has_pad, bad_mask, bad_enc_mask, first_padded = values[:9]
    if bad_mask:
        raise non_binary_mask_error(x.attention_mask)
    if bad_enc_mask:
        raise non_binary_mask_error(enc_mask, "encoder_attention_mask")
    _raise_on_ranges(c, x, bad_ids, bad_tt, bad_pos)
    if count_rows:
        _check_row_lengths(c, values[9:], x.past_length)
    if has_pad:
        log_once(
            "xlmrxl: input_ids contain the pad token but no attention_mask was given; pass the "
            "attention_mask your tokenizer returns, or padded positions are attended to",
            logging.WARNING,
        )
    return bool(mask_full), bool(enc_full), bool(first_padded)


def _position_limit(c: Any) -> int | None:
    """The most real tokens a row may have with absolute positions (None: no pad token, no limit known)."""
    return c.max_position_embeddings - c.pad_token_id - 1 if c.pad_token_id is not None else None


def _input_shape(c: Any, x: Inputs) -> tuple[int, int]:
    """(batch, seq_len) of whichever of input_ids / inputs_embeds was given (exactly one must be)."""
    if x.input_ids is not None and x.inputs_embeds is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if x.input_ids is None and x.inputs_embeds is None:
        raise ValueError("pass input_ids or inputs_embeds (neither was given)")
    if x.input_ids is not None:
        if x.input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(x.input_ids.shape)}")
        shape = tuple(x.input_ids.shape)
    else:
        emb = x.inputs_embeds
        if emb.dim() != 3 or emb.shape[-1] != c.hidden_size:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {c.hidden_size}), got {tuple(emb.shape)}")
        shape = tuple(emb.shape[:2])
    _check_ids_dtype(x.input_ids)
    if shape[0] == 0:
        raise ValueError(
            f"the input has batch size 0 (shape {shape}); pass at least one sequence (a sequence may be empty)"
        )
    return shape


def _check_ids_dtype(ids: torch.Tensor | None) -> None:
    """Token ids are integers."""
    if ids is not None and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
        raise TypeError(
            f"input_ids has dtype {ids.dtype}; token ids are integers: pass input_ids.long() (or the "
            "tokenizer's output as is)"
        )


def _check_embeds_dtype(emb: torch.Tensor | None, model_dtype: torch.dtype) -> None:
    """As in transformers, embeddings of a lower precision are promoted to the model's dtype by the position
    embeddings; any other dtype (float64 for an fp32 model, integers) is an error, not a silent cast."""
    if emb is not None and (not emb.is_floating_point() or torch.promote_types(emb.dtype, model_dtype) != model_dtype):
        raise TypeError(
            f"inputs_embeds has dtype {emb.dtype} but the model computes in {model_dtype}; pass "
            f"inputs_embeds.to({model_dtype}) (or convert the model, e.g. model.to({emb.dtype}))"
        )


def _check_shapes(c: Any, x: Inputs, shape: tuple[int, int]) -> None:
    """The mask, token types and positions match the input; the sequence fits the position embeddings."""
    batch, seq_len = shape
    past = x.past_length
    expected = (batch, seq_len + past)
    if x.attention_mask is not None and tuple(x.attention_mask.shape) != expected:
        extra = f" (input {shape} plus {past} cached tokens)" if past else ""
        raise ValueError(
            f"attention_mask has shape {tuple(x.attention_mask.shape)} but must be {expected}"
            f"{extra}: one entry per token, 1 = real, 0 = padding"
        )
    if x.token_type_ids is not None and tuple(x.token_type_ids.shape) != shape:
        raise ValueError(f"token_type_ids has shape {tuple(x.token_type_ids.shape)} but the input has shape {shape}")
    if x.position_ids is not None and x.position_ids.shape[-1] != seq_len:
        raise ValueError(
            f"position_ids has shape {tuple(x.position_ids.shape)}; its last dimension must be seq_len={seq_len}"
        )
    absolute = c.position_embedding_type == "absolute"
    limit = _position_limit(c)
    if absolute and x.position_ids is None and x.input_ids is None and limit is not None and seq_len > limit:
        raise ValueError(
            f"inputs_embeds has {seq_len} positions but the model takes at most {limit} "
            f"(max_position_embeddings={c.max_position_embeddings} - 2); truncate the input"
        )
    if not absolute and seq_len + past > c.max_position_embeddings:
        raise ValueError(
            f"the sequence has {seq_len + past} tokens but relative position embeddings "
            f"cover at most max_position_embeddings={c.max_position_embeddings}; truncate it"
        )


def _encoder_mask(c: Any, x: Inputs) -> torch.Tensor | None:
    """The cross-attention mask a decoder reads (checked against ``encoder_hidden_states``), or None."""
    if not (c.is_decoder and x.encoder_hidden_states is not None and x.encoder_attention_mask is not None):
        return None
    enc_mask = x.encoder_attention_mask
    if tuple(enc_mask.shape) != tuple(x.encoder_hidden_states.shape[:2]):
        raise ValueError(
            f"encoder_attention_mask has shape {tuple(enc_mask.shape)} but encoder_hidden_states "
            f"has (batch, seq_len) = {tuple(x.encoder_hidden_states.shape[:2])}"
        )
    return enc_mask


def _read_flags(c: Any, x: Inputs, shape: tuple[int, int], enc_mask: torch.Tensor | None) -> tuple[list[int], bool]:
    """Every data-dependent check in one small tensor, read back with one sync: 9 flags, then (when counted) the
    real tokens of each row. Returns (values, whether the rows were counted)."""
    ids, mask, seq_len = x.input_ids, x.attention_mask, shape[1]
    ref = ids if ids is not None else x.inputs_embeds
    device = ref.device
    zero = torch.zeros((), dtype=torch.long, device=device)

    def out_of(t: torch.Tensor | None, hi: int) -> torch.Tensor:
        return ((t < 0) | (t >= hi)).any().long() if t is not None else zero

    absolute = c.position_embedding_type == "absolute"
    warn_pad = mask is None and ids is not None and c.pad_token_id is not None and seq_len
    first = mask is not None and seq_len and mask.dim() == 2
    flags = [
        out_of(ids, c.vocab_size),
        out_of(x.token_type_ids, c.type_vocab_size),
        out_of(x.position_ids if absolute else None, c.max_position_embeddings),
        (mask == 1).all().long() if mask is not None else zero + 1,
        (enc_mask == 1).all().long().to(device) if enc_mask is not None else zero + 1,
        (ids[:, [-1, 0]] == c.pad_token_id).any().long() if warn_pad else zero,
        _non_binary(mask, zero),
        _non_binary(enc_mask, zero).to(device),
        (mask[:, 0] == 0).any().long() if first else zero,
    ]
    count_rows = absolute and x.position_ids is None and ids is not None and _position_limit(c) is not None
    parts = [torch.stack(flags)]
    if count_rows:
        parts.append((ids != c.pad_token_id).sum(dim=1) + x.past_length)
    return torch.cat(parts).tolist(), count_rows


def _non_binary(mask: torch.Tensor | None, zero: torch.Tensor) -> torch.Tensor:
    """1 when ``mask`` holds a value other than 0 and 1 (``xlmrxl.masks.non_binary``, as a long flag), else 0."""
    if mask is None or mask.dtype == torch.bool:
        return zero
    return ((mask != 0) & (mask != 1)).any().long()


def _raise_on_ranges(c: Any, x: Inputs, bad_ids: int, bad_tt: int, bad_pos: int) -> None:
    """The error for ids, token types or positions outside their embedding tables, with the values found."""
    if bad_ids:
        lo, hi = int(x.input_ids.min()), int(x.input_ids.max())
        raise ValueError(f"input_ids must lie in [0, vocab_size={c.vocab_size}); got values from {lo} to {hi}")
    if bad_tt:
        hi = int(x.token_type_ids.max())
        raise ValueError(
            f"token_type_ids must lie in [0, type_vocab_size={c.type_vocab_size}); got a value {hi}"
            + (" (XLM-RoBERTa-XL has a single token type: pass zeros or nothing)" if c.type_vocab_size == 1 else "")
        )
    if bad_pos:
        lo, hi = int(x.position_ids.min()), int(x.position_ids.max())
        raise ValueError(
            f"position_ids must lie in [0, max_position_embeddings={c.max_position_embeddings}); "
            f"got values from {lo} to {hi}"
        )


def _check_row_lengths(c: Any, counts: list[int], past_length: int) -> None:
    """Each row's real tokens (plus the cached ones) fit the absolute position embeddings."""
    limit = _position_limit(c)
    for row, n in enumerate(counts):
        if n > limit:
            cached = f" (including {past_length} cached)" if past_length else ""
            raise ValueError(
                f"row {row} has {n} real (non-pad) tokens{cached} but the model takes at most {limit} "
                f"(max_position_embeddings={c.max_position_embeddings} - 2, special tokens included); "
                f"truncate the input, e.g. tokenizer(..., truncation=True, max_length={limit})"
            )
