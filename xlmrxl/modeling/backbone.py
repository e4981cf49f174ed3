"""The backbone ``XLMRobertaXLModel``: input validation (one device sync), embeddings, encoder, pooler."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..backend import log_once
from ..config import XLMRobertaXLConfig
from ..fast.execute import run
from ..fast.packing import PackedEncoderOutput
from ..fast.routing import PACKED, Call, Route, route
from ..masks import cached_length, non_binary, non_binary_mask_error
from ..outputs import BaseModelOutputWithPoolingAndCrossAttentions, packed_mask, set_packed_mask
from ..reasons import describe
from .base import XLMRobertaXLPreTrainedModel, first_token_padded_reason
from .encoder import XLMRobertaXLEncoder
from .layers import XLMRobertaXLEmbeddings, XLMRobertaXLPooler


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
        """Check the inputs; returns (mask_is_full, encoder_mask_is_full, first_padded) from the same single device
        sync (``first_padded``: some row's position 0 is padding, i.e. the batch is left-padded)."""
        c = self.config
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds (neither was given)")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
            shape = tuple(input_ids.shape)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != c.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {c.hidden_size}), got {tuple(inputs_embeds.shape)}"
                )
            shape = tuple(inputs_embeds.shape[:2])
        batch, seq_len = shape
        if input_ids is not None and (
            input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool
        ):
            raise TypeError(
                f"input_ids has dtype {input_ids.dtype}; token ids are integers: pass input_ids.long() (or the "
                "tokenizer's output as is)"
            )
        if batch == 0:
            raise ValueError(
                f"the input has batch size 0 (shape {shape}); pass at least one sequence (a sequence may be empty)"
            )
        expected = (batch, seq_len + past_length)
        if attention_mask is not None and tuple(attention_mask.shape) != expected:
            extra = f" (input {shape} plus {past_length} cached tokens)" if past_length else ""
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but must be {expected}"
                f"{extra}: one entry per token, 1 = real, 0 = padding"
            )
        if token_type_ids is not None and tuple(token_type_ids.shape) != shape:
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)} but the input has shape {shape}")
        if position_ids is not None and position_ids.shape[-1] != seq_len:
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}; its last dimension must be seq_len={seq_len}"
            )
        absolute = c.position_embedding_type == "absolute"
        limit = c.max_position_embeddings - c.pad_token_id - 1 if c.pad_token_id is not None else None
        if absolute and position_ids is None and input_ids is None and limit is not None and seq_len > limit:
            raise ValueError(
                f"inputs_embeds has {seq_len} positions but the model takes at most {limit} "
                f"(max_position_embeddings={c.max_position_embeddings} - 2); truncate the input"
            )
        if not absolute and seq_len + past_length > c.max_position_embeddings:
            raise ValueError(
                f"the sequence has {seq_len + past_length} tokens but relative position embeddings "
                f"cover at most max_position_embeddings={c.max_position_embeddings}; truncate it"
            )
        enc_mask = None
        if c.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            enc_mask = encoder_attention_mask
            if tuple(enc_mask.shape) != tuple(encoder_hidden_states.shape[:2]):
                raise ValueError(
                    f"encoder_attention_mask has shape {tuple(enc_mask.shape)} but encoder_hidden_states "
                    f"has (batch, seq_len) = {tuple(encoder_hidden_states.shape[:2])}"
                )

        if inputs_embeds is not None:
            # as in transformers, embeddings of a lower precision are promoted to the model's dtype by the position
            # embeddings; any other dtype (float64 for an fp32 model, integers) is an error, not a silent cast
            model_dtype = self.embeddings.word_embeddings.weight.dtype
            if not inputs_embeds.is_floating_point() or torch.promote_types(inputs_embeds.dtype, model_dtype) != (
                model_dtype
            ):
                raise TypeError(
                    f"inputs_embeds has dtype {inputs_embeds.dtype} but the model computes in {model_dtype}; pass "
                    f"inputs_embeds.to({model_dtype}) (or convert the model, e.g. model.to({inputs_embeds.dtype}))"
                )
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None, None, None
        # Every data-dependent check goes into one small tensor, read back with one sync.
        ref = input_ids if input_ids is not None else inputs_embeds
        device = ref.device
        zero = torch.zeros((), dtype=torch.long, device=device)
        flags = []
        if input_ids is not None:
            flags.append(((input_ids < 0) | (input_ids >= c.vocab_size)).any().long())
        else:
            flags.append(zero)
        if token_type_ids is not None:
            flags.append(((token_type_ids < 0) | (token_type_ids >= c.type_vocab_size)).any().long())
        else:
            flags.append(zero)
        if absolute and position_ids is not None:
            flags.append(((position_ids < 0) | (position_ids >= c.max_position_embeddings)).any().long())
        else:
            flags.append(zero)
        flags.append((attention_mask == 1).all().long() if attention_mask is not None else zero + 1)
        flags.append((enc_mask == 1).all().long().to(device) if enc_mask is not None else zero + 1)
        warn_pad = attention_mask is None and input_ids is not None and c.pad_token_id is not None
        flags.append((input_ids[:, [-1, 0]] == c.pad_token_id).any().long() if warn_pad and seq_len else zero)
        flags.append(non_binary(attention_mask).long() if attention_mask is not None else zero)
        flags.append(non_binary(enc_mask).long().to(device) if enc_mask is not None else zero)
        first = attention_mask is not None and seq_len and attention_mask.dim() == 2
        flags.append((attention_mask[:, 0] == 0).any().long() if first else zero)
        count_rows = absolute and position_ids is None and input_ids is not None and limit is not None
        parts = [torch.stack(flags)]
        if count_rows:
            parts.append((input_ids != c.pad_token_id).sum(dim=1) + past_length)
        values = torch.cat(parts).tolist()
        bad_ids, bad_tt, bad_pos, mask_full, enc_full, has_pad, bad_mask, bad_enc_mask, first_padded = values[:9]

        if bad_mask:
            raise non_binary_mask_error(attention_mask)
        if bad_enc_mask:
            raise non_binary_mask_error(enc_mask, "encoder_attention_mask")
        if bad_ids:
            lo, hi = int(input_ids.min()), int(input_ids.max())
            raise ValueError(f"input_ids must lie in [0, vocab_size={c.vocab_size}); got values from {lo} to {hi}")
        if bad_tt:
            hi = int(token_type_ids.max())
            raise ValueError(
                f"token_type_ids must lie in [0, type_vocab_size={c.type_vocab_size}); got a value {hi}"
                + (" (XLM-RoBERTa-XL has a single token type: pass zeros or nothing)" if c.type_vocab_size == 1 else "")
            )
        if bad_pos:
            lo, hi = int(position_ids.min()), int(position_ids.max())
            raise ValueError(
                f"position_ids must lie in [0, max_position_embeddings={c.max_position_embeddings}); "
                f"got values from {lo} to {hi}"
            )
        if count_rows:
            for row, n in enumerate(values[9:]):
                if n > limit:
                    cached = f" (including {past_length} cached)" if past_length else ""
                    raise ValueError(
                        f"row {row} has {n} real (non-pad) tokens{cached} but the model takes at most {limit} "
                        f"(max_position_embeddings={c.max_position_embeddings} - 2, special tokens included); "
                        f"truncate the input, e.g. tokenizer(..., truncation=True, max_length={limit})"
                    )
        if has_pad:
            log_once(
                "xlmrxl: input_ids contain the pad token but no attention_mask was given; pass the "
                "attention_mask your tokenizer returns, or padded positions are attended to",
                logging.WARNING,
            )
        return bool(mask_full), bool(enc_full), bool(first_padded)

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
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        if self.config.is_decoder:
            use_cache = self.config.use_cache if use_cache is None else use_cache
        else:
            use_cache = False

        past_length = cached_length(past_key_values)
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
