"""The encoder: the layer stack and final LayerNorm, run fused (packed / cached) or on the exact path.

Takes the **2D** (B, K) attention mask; builds the additive masks the exact-path layers need as transformers 4.56.2
does; which path runs is decided by ``xlmrxl.fast.route``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backend import Backend
from ..cache import DynamicCache, EncoderDecoderCache
from ..config import XLMRobertaXLConfig
from ..fast import stack
from ..fast.routing import CACHED, PACKED, Call, route
from ..masks import cached_length, causal_eager_mask, causal_sdpa_mask, expand_mask, padding_eager_mask
from ..outputs import BaseModelOutputWithPastAndCrossAttentions, set_packed_mask
from .layers import XLMRobertaXLLayer


class XLMRobertaXLEncoder(nn.Module):
    """The layer stack and the final LayerNorm. Takes the **2D** (B, K) attention mask and builds the masks the
    attention layers need; ``xlmrxl.fast.route`` decides how each call runs."""

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([XLMRobertaXLLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.backend = Backend()

    def _head_mask(self, head_mask: torch.Tensor | list | None, dtype: torch.dtype | str | None):
        if head_mask is None:
            return [None] * self.config.num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask.unsqueeze(0).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
            head_mask = head_mask.expand(self.config.num_hidden_layers, -1, -1, -1, -1)
        elif head_mask.dim() == 2:
            head_mask = head_mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
        else:
            raise ValueError(
                f"head_mask must have shape [num_heads] or [num_layers, num_heads], got {tuple(head_mask.shape)}"
            )
        return head_mask.to(dtype=dtype)

    def _masks(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_length: int,
        sdpa_masks: bool,
        mask_is_full: bool | None,
        encoder_mask_is_full: bool | None,
    ):
        """The additive self- and cross-attention masks exactly as 4.56.2's XLMRobertaXLModel.forward builds them
        (None where they are all zeros: adding zeros changes nothing)."""
        batch, seq_len = hidden_states.shape[:2]
        dtype, device = hidden_states.dtype, hidden_states.device
        # (tracing / compiling: never branch on data; a mask of ones gives the same result, built or not)
        recording = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if attention_mask is not None and mask_is_full is None:
            mask_is_full = False if recording else bool(torch.all(attention_mask == 1))
        full = attention_mask is None or mask_is_full
        if not self.config.is_decoder:
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
        if self.config.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            if encoder_mask_is_full is None:
                encoder_mask_is_full = False if recording else bool(torch.all(encoder_attention_mask == 1))
            if not encoder_mask_is_full:
                cross_mask = (
                    expand_mask(encoder_attention_mask, dtype, seq_len)
                    if sdpa_masks
                    else padding_eager_mask(encoder_attention_mask, dtype)
                )
        return self_mask, cross_mask

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = False,
        output_hidden_states: bool | None = False,
        return_dict: bool | None = True,
        cache_position: torch.Tensor | None = None,
        *,
        mask_is_full: bool | None = None,
        encoder_mask_is_full: bool | None = None,
        padded_loss: str | None = None,
    ) -> tuple | BaseModelOutputWithPastAndCrossAttentions:
        """transformers 4.56.2's encoder arguments, plus (keyword-only, from ``XLMRobertaXLModel``): what its
        validation sync learned (``mask_is_full``, ``encoder_mask_is_full``) and ``padded_loss`` (the head's loss
        reads padded positions: see ``xlmrxl.fast.routing.Call``). How the call runs is ``xlmrxl.fast.route``'s
        decision."""
        # the cache as every path uses and returns it (legacy tuples converted, one created for use_cache)
        if isinstance(past_key_values, (tuple, list)):
            past_key_values = EncoderDecoderCache.from_legacy_cache(past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        r = route(
            self,
            Call(
                hidden_states=hidden_states,
                attention_mask=attention_mask,
                mask_is_full=mask_is_full,  # known from the model's validation sync: an all-ones mask is dropped
                head_mask=head_mask,
                output_attentions=bool(output_attentions),
                encoder_hidden_states=encoder_hidden_states,
                past_key_values=past_key_values,
                use_cache=bool(use_cache),
                padded_loss=padded_loss,
            ),
        )
        if r.path == PACKED:
            last, all_hidden = stack.encoder_forward(
                self,
                hidden_states,
                r.mask,
                self.backend,
                output_hidden_states=bool(output_hidden_states),
                causal=r.causal,
            )
            if not return_dict:
                return tuple(v for v in (last, all_hidden) if v is not None)
            out = BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=last, hidden_states=all_hidden)
            return set_packed_mask(out, r.mask)  # zeros at padded positions: heads may skip them
        if r.path == CACHED:  # causal self-attention with a KV cache: the fused decoder step (prefill or new tokens)
            self_cache = getattr(past_key_values, "self_attention_cache", past_key_values)
            last, all_hidden = stack.decoder_forward(
                self,
                hidden_states,
                r.mask,
                self_cache,
                self.backend,
                output_hidden_states=bool(output_hidden_states),
                cache_position=cache_position,
            )
            if not return_dict:
                return tuple(v for v in (last, past_key_values, all_hidden) if v is not None)
            return BaseModelOutputWithPastAndCrossAttentions(
                last_hidden_state=last, past_key_values=past_key_values, hidden_states=all_hidden
            )

        past_length = cached_length(past_key_values)

        sdpa_masks = (
            getattr(self.config, "attn_implementation", "sdpa") == "sdpa"
            and self.config.position_embedding_type == "absolute"
            and head_mask is None
            and not output_attentions
        )
        self_mask, cross_mask = self._masks(
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            past_length,
            sdpa_masks,
            mask_is_full,
            encoder_mask_is_full,
        )
        layer_head_masks = self._head_mask(head_mask, hidden_states.dtype)

        all_hidden = () if output_hidden_states else None
        all_attn = () if output_attentions else None
        all_cross = () if output_attentions and self.config.add_cross_attention else None
        for i, layer_module in enumerate(self.layer):
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
            layer_outputs = layer_module(
                hidden_states,
                self_mask,
                layer_head_masks[i],
                encoder_hidden_states,
                cross_mask,
                past_key_values,
                output_attentions,
                cache_position,
            )
            hidden_states = layer_outputs[0]
            if output_attentions:
                all_attn = all_attn + (layer_outputs[1],)
                if self.config.add_cross_attention:
                    all_cross = all_cross + (layer_outputs[2],)
        hidden_states = self.LayerNorm(hidden_states)
        if output_hidden_states:
            all_hidden = all_hidden + (hidden_states,)

        if not return_dict:
            return tuple(v for v in (hidden_states, past_key_values, all_hidden, all_attn, all_cross) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden,
            attentions=all_attn,
            cross_attentions=all_cross,
        )
