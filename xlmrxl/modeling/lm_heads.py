"""Language-model heads: masked LM and causal LM (with its loss and the generation hooks)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import CrossEntropyLoss

from ..caches.view import cached_length
from ..config import XLMRobertaXLConfig
from ..generation import generate
from ..masks import create_position_ids_from_input_ids
from ..outputs import CausalLMOutputWithCrossAttentions, MaskedLMOutput, packed_mask, real_rows
from .backbone import XLMRobertaXLModel
from .base import XLMRobertaXLPreTrainedModel, backbone_tail, labels_on_padding, nested_model
from .layers import XLMRobertaXLLMHead

logger = logging.getLogger("xlmrxl")


_LM_TIED = {
    "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
    "lm_head.decoder.bias": "lm_head.bias",
}


class _LMHeadModel(XLMRobertaXLPreTrainedModel):
    _tied_weights_keys = dict(_LM_TIED)
    # Checkpoint keys that win over the rest of their tie when a checkpoint stores several with different values:
    # transformers 4.56.2 loads both bias keys, then ``_tie_weights`` re-points ``lm_head.bias`` at the decoder's,
    # so ``lm_head.decoder.bias`` is the one kept (the decoder weight's tie keeps its source, the embeddings).
    _load_preferred_keys = ("lm_head.decoder.bias",)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias


class XLMRobertaXLForMaskedLM(_LMHeadModel):
    """Backbone (no pooler) + LM head; CrossEntropy loss on ``labels`` (-100 ignored)."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        if self.config.is_decoder:
            logger.warning(
                "XLMRobertaXLForMaskedLM with config.is_decoder=True uses causal attention; set "
                "is_decoder=False for bi-directional self-attention"
            )
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.lm_head = XLMRobertaXLLMHead(self.config)
        self.post_init()

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
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | MaskedLMOutput:
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            padded_loss="the masked-LM loss has labels on padded positions"
            if labels_on_padding(labels, attention_mask)
            else None,
        )
        # packed path: the vocabulary-wide head runs on real tokens only (logits at padded positions are 0, as the
        # hidden states there are; a loss with labels on padding took the exact path)
        packed = packed_mask(outputs)
        logits = (
            real_rows(self.lm_head, outputs.last_hidden_state, packed[0])
            if packed
            else self.lm_head(outputs.last_hidden_state)
        )
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        if not return_dict:
            out = (logits,) + backbone_tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XLMRobertaXLForCausalLM(_LMHeadModel):
    """Decoder backbone (no pooler) + LM head; shifted next-token loss; ``generate`` via ``xlmrxl.generation``."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        if not self.config.is_decoder:
            logger.warning(
                "XLMRobertaXLForCausalLM is meant to be a decoder: set config.is_decoder=True for causal attention"
            )
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.lm_head = XLMRobertaXLLMHead(self.config)
        self.post_init()

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
        labels: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache_position: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple | CausalLMOutputWithCrossAttentions:
        """``logits_to_keep`` (an xlmrxl extension; transformers 4.56.2 ignores it here): 0 = logits for every
        position; n > 0 = only the last n positions; a 1D tensor = those positions. ``cache_position`` is handed to
        ``cache.update`` in ``cache_kwargs``. Other ``kwargs`` go to the loss (``num_items_in_batch``,
        ``ignore_index``, ``shift_labels``), as in transformers; any other keyword is a TypeError."""
        unknown = sorted(set(kwargs) - set(_LOSS_KWARGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.forward() got unexpected keyword arguments {unknown}; the extra keywords it "
                f"takes are the loss's: {', '.join(_LOSS_KWARGS)}"
            )
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        if labels is not None:
            use_cache = False
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
            padded_loss=_causal_padded_loss(labels, attention_mask, **kwargs),
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden = hidden[:, -logits_to_keep:, :]
        else:
            hidden = hidden[:, logits_to_keep, :]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = _causal_lm_loss(logits, labels, self.config.vocab_size, **kwargs)
        if not return_dict:
            out = (logits,) + backbone_tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )

    # -- generation hooks ---------------------------------------------------------------------------------------
    def can_generate(self) -> bool:
        return True

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Autoregressive generation; see ``xlmrxl.generation.generate``."""
        return generate(self, *args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor | None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> dict[str, Any]:
        """As transformers 4.56.2: positions from pad ids (padding_idx rule), only the uncached suffix is fed."""
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape)
        position_ids = None
        if model_kwargs.get("position_ids") is None:
            position_ids = create_position_ids_from_input_ids(input_ids, padding_idx=self.config.pad_token_id)
        if past_key_values is not None:
            past = cached_length(past_key_values)
            cut = past if input_ids.shape[1] > past else input_ids.shape[1] - 1
            input_ids = input_ids[:, cut:]
            if position_ids is not None:
                position_ids = position_ids[:, cut:]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "past_key_values": past_key_values,
        }

    @staticmethod
    def _reorder_cache(past_key_values: Any, beam_idx: torch.Tensor) -> Any:
        if hasattr(past_key_values, "reorder_cache"):
            past_key_values.reorder_cache(beam_idx)
            return past_key_values
        return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)


_LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")


def _causal_padded_loss(
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> str | None:
    """The causal-LM loss reads the logits at position i for the label at i + 1: does any of those sit on padding?"""
    if shift_labels is None and labels is not None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    if labels_on_padding(shift_labels, attention_mask, ignore_index):
        return "the causal-LM loss predicts labels from padded positions"
    return None


def _causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss``: fp32 logits, labels shifted left by one, mean (or sum / num_items)."""
    logits = logits.float()
    if shift_labels is None:
        labels = F.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:].contiguous()
    logits = logits.view(-1, vocab_size)
    shift_labels = shift_labels.view(-1).to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits, shift_labels, ignore_index=ignore_index, reduction=reduction)
    if reduction == "sum":
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss
