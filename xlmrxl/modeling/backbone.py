"""The backbone ``XLMRobertaXLModel``: input validation (one device sync), embeddings, encoder, pooler."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..caches.view import cached_length
from ..config import XLMRobertaXLConfig
from ..fast.packing import PackedEncoderOutput
from ..fast.routing import PACKED, Call, Route, route
from ..fast.stack import run
from ..outputs import BaseModelOutputWithPoolingAndCrossAttentions, packed_mask, set_packed_mask
from ..reasons import describe
from .base import XLMRobertaXLPreTrainedModel, first_token_padded_reason
from .encoder import XLMRobertaXLEncoder
from .layers import XLMRobertaXLEmbeddings, XLMRobertaXLPooler
from .validation import Inputs, validate_inputs


# ---------------------------------------------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------------------------------------------
class XLMRobertaXLModel(XLMRobertaXLPreTrainedModel):
    """Embeddings + encoder (+ pooler when ``add_pooling_layer``)."""

    def __init__(self, config: XLMRobertaXLConfig | dict, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        config = self.config
        self.embeddings = XLMRobertaXLEmbeddings(config)
        self.encoder = XLMRobertaXLEncoder(config)
        self.pooler = XLMRobertaXLPooler(config) if add_pooling_layer else None
        self.position_embedding_type = config.position_embedding_type
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    @property
    def attn_implementation(self) -> str:
        return self.config.attn_implementation

    def _validate(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_length: int,
    ):
        """Check the inputs (``xlmrxl.modeling.validation``); returns (mask_is_full, encoder_mask_is_full,
        first_padded) from the same single device sync."""
        return validate_inputs(
            self.config,
            self.embeddings.word_embeddings.weight.dtype,
            Inputs(
                input_ids,
                inputs_embeds,
                attention_mask,
                token_type_ids,
                position_ids,
                encoder_hidden_states,
                encoder_attention_mask,
                past_length,
            ),
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
        *,
        padded_loss: str | None = None,
        reads_first: bool = False,
    ) -> tuple | BaseModelOutputWithPoolingAndCrossAttentions:
        """transformers 4.56.2's arguments, plus (keyword-only, from the heads): ``padded_loss`` (what in the head's
        loss reads padded positions) and ``reads_first`` (the head reads position 0, ``<s>``, as the pooler does).
        Both send a call whose read positions are padding to the exact path (see ``xlmrxl.fast.routing.Call``)."""
        c = self.config  # (the heads' _flags, inline: the forward enters few files before its first kernel)
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = c.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = c.return_dict if return_dict is None else return_dict
        if self.config.is_decoder:
            use_cache = self.config.use_cache if use_cache is None else use_cache
        else:
            use_cache = False

        past_length = 0 if past_key_values is None else cached_length(past_key_values)
        mask_full, enc_full, first_padded = self._validate(
            input_ids,
            inputs_embeds,
            attention_mask,
            token_type_ids,
            position_ids,
            encoder_hidden_states,
            encoder_attention_mask,
            past_length,
        )
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if seq_len == 0 and (reads_first or self.pooler is not None):
            raise ValueError(
                "the input has zero-length sequences, but the pooler / classification head reads position 0 (<s>); "
                "pass at least one token per row (the tokenizer adds <s> and </s>)"
            )
        if padded_loss is None and first_padded and reads_first:
            padded_loss = first_token_padded_reason("the classification head")
        embedding_output = self.embeddings(
            input_ids=input_ids,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            past_key_values_length=past_length,
        )
        encoder_outputs = self.encoder(
            embedding_output,
            attention_mask=attention_mask,
            head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states if self.config.is_decoder else None,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
            mask_is_full=mask_full,
            encoder_mask_is_full=enc_full,
            padded_loss=padded_loss,
        )
        sequence_output = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None

        if not return_dict:
            return (sequence_output, pooled_output) + encoder_outputs.to_tuple()[1:]
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            past_key_values=encoder_outputs.past_key_values,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            cross_attentions=encoder_outputs.cross_attentions,
        )
        packed = packed_mask(encoder_outputs)
        return set_packed_mask(out, packed[0]) if packed is not None else out

    def forward_packed(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = False,
    ) -> PackedEncoderOutput:
        """Padding-free outputs: the final hidden states of the **real tokens only**, never scattered back.

        Returns ``xlmrxl.fast.PackedEncoderOutput`` with ``last_hidden_state`` ``(T, H)`` (T = number of real
        tokens, row-major over the batch), ``hidden_states`` (packed too, when asked) and ``packing``:
        ``packing.cu_seqlens`` (int32, B+1) delimits each sequence's rows, ``packing.unpack(x)`` restores
        ``(B, S, ...)`` with zeros at padding. For serving embeddings without paying for padding.
        Raises ValueError when the call cannot take the fused path (e.g. autograd recording), saying why."""
        mask_full, _, _ = self._validate(
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, None, None, 0
        )
        embedding_output = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        r = route(
            self.encoder, Call(hidden_states=embedding_output, attention_mask=attention_mask, mask_is_full=mask_full)
        )
        return run(
            self.encoder,
            r,
            embedding_output,
            self.backend,
            output_hidden_states=bool(output_hidden_states),
            return_packed=True,
            exact=lambda: _not_packed(r),
        )


def _not_packed(r: Route) -> None:
    raise ValueError(
        "forward_packed runs only on the fused padding-free path, which this call cannot take: "
        + describe(r.not_supported[PACKED])
    )
