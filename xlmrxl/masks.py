"""Masks and positions: the small helpers the exact path and generation share.

Position ids follow fairseq's ``make_positions`` (padding index rule); the additive float masks are built exactly as
transformers 4.56.2 builds them (``AttentionMaskConverter`` and ``get_extended_attention_mask``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "create_position_ids_from_input_ids",
    "non_binary",
    "non_binary_mask_error",
    "check_binary_mask",
    "exact_masks",
]


def create_position_ids_from_input_ids(
    input_ids: torch.Tensor, padding_idx: int, past_key_values_length: int = 0
) -> torch.Tensor:
    """fairseq ``make_positions``: real tokens get padding_idx+1+past, +2+past, ...; pad tokens get padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental_indices.long() + padding_idx


def expand_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int) -> torch.Tensor:
    """transformers' ``AttentionMaskConverter.expand_mask``: (B, K) -> (B, 1, tgt_len, K); 0 kept, finfo.min masked."""
    bsz, src_len = mask.shape
    expanded = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted = torch.tensor(1.0, dtype=dtype) - expanded
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def causal_sdpa_mask(mask2d: torch.Tensor, query_length: int, past: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``AttentionMaskConverter.to_4d`` (causal): padding and causal mask, (B, 1, S, P + S)."""
    device = mask2d.device
    expanded = expand_mask(mask2d, dtype, query_length)
    if query_length <= 1:
        out = expanded
    else:
        min_val = torch.finfo(dtype).min
        causal = torch.full((query_length, query_length), min_val, device=device)
        cond = torch.arange(query_length, device=device)
        causal.masked_fill_(cond < (cond + 1).view(query_length, 1), 0)
        causal = causal.to(dtype)
        if past > 0:
            causal = torch.cat([torch.zeros(query_length, past, dtype=dtype, device=device), causal], dim=-1)
        causal = causal[None, None].expand(mask2d.shape[0], 1, query_length, query_length + past)
        out = causal.masked_fill(expanded.bool(), min_val)
    if device.type == "cuda":  # 4.56.2 un-masks fully masked rows for the memory-efficient SDPA kernel
        out = out.mul(~torch.all(out == torch.finfo(dtype).min, dim=-1, keepdim=True))
    return out


def causal_eager_mask(mask2d: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``get_extended_attention_mask`` for decoders: (1 - causal * mask) * finfo.min, (B, 1, S, K)."""
    device = mask2d.device
    batch = mask2d.shape[0]
    seq_ids = torch.arange(query_length, device=device)
    causal = seq_ids[None, None, :].repeat(batch, query_length, 1) <= seq_ids[None, :, None]
    causal = causal.to(mask2d.dtype)
    if causal.shape[1] < mask2d.shape[1]:
        prefix = mask2d.shape[1] - causal.shape[1]
        causal = torch.cat(
            [torch.ones((batch, query_length, prefix), device=device, dtype=causal.dtype), causal], dim=-1
        )
    ext = causal[:, None, :, :] * mask2d[:, None, None, :]
    ext = ext.to(dtype=dtype)
    return (1.0 - ext) * torch.finfo(dtype).min


def padding_eager_mask(mask2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``get_extended_attention_mask`` / ``invert_attention_mask`` for a 2D mask: (B, 1, 1, K)."""
    ext = mask2d[:, None, None, :].to(dtype=dtype)
    return (1.0 - ext) * torch.finfo(dtype).min


def non_binary(mask: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: does ``mask`` hold a value other than 0 and 1 (no host sync)? Bool masks never do."""
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=torch.bool, device=mask.device)
    return ((mask != 0) & (mask != 1)).any()


def non_binary_mask_error(mask: torch.Tensor, name: str = "attention_mask") -> ValueError:
    """The error for a mask with values other than 0 / 1 (every path refuses them: the fused path would read any
    nonzero as "real", the exact path would add ``(1 - value) * min`` to the scores)."""
    bad = mask[(mask != 0) & (mask != 1)]
    shown = ", ".join(f"{v:g}" for v in bad.unique()[:5].tolist())
    return ValueError(
        f"{name} must hold only 1 (real token) and 0 (padding), as bool or 0/1 integers or floats; "
        f"got the value(s) {shown}"
    )


def check_binary_mask(mask: torch.Tensor | None, name: str = "attention_mask") -> None:
    """Raise ``non_binary_mask_error`` when ``mask`` holds anything but 0 / 1 (one host sync; none for bool)."""
    if mask is not None and mask.dtype != torch.bool and bool(non_binary(mask)):
        raise non_binary_mask_error(mask, name)


def exact_masks(
    config: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor | None,
    encoder_attention_mask: torch.Tensor | None,
    past_length: int,
    sdpa_masks: bool,
    mask_is_full: bool | None,
    encoder_mask_is_full: bool | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The exact path's additive self- and cross-attention masks, exactly as 4.56.2's XLMRobertaXLModel.forward
    builds them from the 2D masks (None where they are all zeros: adding zeros changes nothing)."""
    batch, seq_len = hidden_states.shape[:2]
    dtype, device = hidden_states.dtype, hidden_states.device
    # (tracing / compiling: never branch on data; a mask of ones gives the same result, built or not)
    recording = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if attention_mask is not None and mask_is_full is None:
        mask_is_full = False if recording else bool(torch.all(attention_mask == 1))
    full = attention_mask is None or mask_is_full
    if not config.is_decoder:
        if full:
            self_mask = None
        elif sdpa_masks:
            self_mask = expand_mask(attention_mask, dtype, seq_len)
        else:
            self_mask = padding_eager_mask(attention_mask, dtype)
    else:
        mask2d = attention_mask
        if mask2d is None:
            mask2d = torch.ones((batch, seq_len + past_length), device=device)
        if sdpa_masks:
            self_mask = (
                None
                if full and (seq_len == 1 or past_length == 0)
                else causal_sdpa_mask(mask2d, seq_len, past_length, dtype)
            )
        else:
            self_mask = causal_eager_mask(mask2d, seq_len, dtype)

    cross_mask = None
    if config.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
        if encoder_mask_is_full is None:
            encoder_mask_is_full = False if recording else bool(torch.all(encoder_attention_mask == 1))
        if not encoder_mask_is_full:
            cross_mask = (
                expand_mask(encoder_attention_mask, dtype, seq_len)
                if sdpa_masks
                else padding_eager_mask(encoder_attention_mask, dtype)
            )
    return self_mask, cross_mask
