"""The encoder: the layer stack and final LayerNorm, run fused (packed / cached) or on the exact path.

Takes the **2D** (B, K) attention mask. ``forward`` is "route, then run": ``xlmrxl.fast.route`` decides how the call
runs, ``xlmrxl.fast.run`` runs it (the exact path: ``_exact``, with the masks of ``xlmrxl.masks.exact_masks``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backend import Backend
from ..caches import DynamicCache, EncoderDecoderCache, cached_length
from ..config import XLMRobertaXLConfig
from ..fast.routing import CACHED, EXACT, PACKED, Call, route
from ..fast.stack import run
from ..masks import exact_masks
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
        out = run(
            self,
            r,
            hidden_states,
            self.backend,
            cache=past_key_values,
            output_hidden_states=bool(output_hidden_states),
            cache_position=cache_position,
            exact=lambda: self._exact(
                hidden_states,
                attention_mask,
                head_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                past_key_values,
                bool(output_attentions),
                bool(output_hidden_states),
                cache_position,
                mask_is_full,
                encoder_mask_is_full,
            ),
        )
        if r.path == EXACT:
            hidden, past_key_values, all_hidden, all_attn, all_cross = out
        else:
            (hidden, all_hidden), all_attn, all_cross = out, None, None
            past_key_values = past_key_values if r.path == CACHED else None
        if not return_dict:
            return tuple(v for v in (hidden, past_key_values, all_hidden, all_attn, all_cross) if v is not None)
        result = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden,
            past_key_values=past_key_values,
            hidden_states=all_hidden,
            attentions=all_attn,
            cross_attentions=all_cross,
        )
        return set_packed_mask(result, r.mask) if r.path == PACKED else result  # zeros at padding: heads may skip

    def _exact(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        head_mask: torch.Tensor | list | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: Any,
        output_attentions: bool,
        output_hidden_states: bool,
        cache_position: torch.Tensor | None,
        mask_is_full: bool | None,
        encoder_mask_is_full: bool | None,
    ) -> tuple:
        """The exact (unfused) path, as transformers 4.56.2 runs it: ``(last, cache, hidden states, attentions,
        cross-attentions)``."""
        sdpa_masks = (
            getattr(self.config, "attn_implementation", "sdpa") == "sdpa"
            and self.config.position_embedding_type == "absolute"
            and head_mask is None
            and not output_attentions
        )
        self_mask, cross_mask = exact_masks(
            self.config,
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            cached_length(past_key_values),
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
        return hidden_states, past_key_values, all_hidden, all_attn, all_cross
