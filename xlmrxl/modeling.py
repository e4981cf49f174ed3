"""XLM-RoBERTa-XL / XXL model classes, API- and state-dict-compatible with transformers 4.56.2.

Contract:
- Same class names, constructor arguments, forward arguments, submodule and attribute names as transformers 4.56.2
  (``roberta.embeddings.word_embeddings``, ``roberta.encoder.layer[i].attention.self.query``, ..., ``lm_head.decoder``),
  so state dicts load both ways unchanged and ``xlmrxl.fast_path`` drives our encoder and transformers' alike.
- The *exact path* reproduces transformers' arithmetic in the model dtype: separate q/k/v GEMMs, pre-LayerNorm
  layers, final encoder LayerNorm, exact-erf GELU, additive float masks built exactly as 4.56.2 builds them, SDPA where
  4.56.2 uses SDPA (``config.attn_implementation="sdpa"``, the default) and the eager maths (scale after QK^T, division
  by sqrt(head_dim)) where it falls back to eager (``output_attentions``, relative positions, ``head_mask``, or
  ``attn_implementation="eager"``). fp32 parity with transformers is ~1e-7.
- Full 4.56.2 feature set: ``head_mask`` ([H] or [L, H]), ``position_embedding_type`` relative_key /
  relative_key_query, ``output_attentions`` / ``output_hidden_states``, decoder mode (causal + padding mask),
  cross-attention, ``past_key_values`` (``xlmrxl.cache`` objects, transformers' own cache objects, or legacy tuples;
  an ``EncoderDecoderCache`` is returned when the model creates one, as 4.56.2 does), ``return_dict=False`` tuples.
- Models register **no buffers**: position ids and zero token types are computed on the fly, so the checkpoint loader
  can build a model under ``torch.device("meta")`` and materialise parameters straight into the target dtype/device.
- Inputs are validated with one device sync per forward (ids in range, token types in range, at most
  ``max_position_embeddings - 2`` real tokens per row, mask shapes), raising ``ValueError`` naming value and limit.
- The encoder asks ``xlmrxl.fast_path`` first (``unsupported_reason`` / ``encoder_forward``, and for cached causal
  decoding, ``decoder_forward`` on the self-attention cache, which is returned as the exact path returns it); when it
  declines (cross-attention, relative positions, ``head_mask``, ``output_attentions``, autograd, ...), the exact path
  runs and the reason is logged once.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

from .backend import Backend, log_once
from .cache import DynamicCache, EncoderDecoderCache
from .config import XLMRobertaXLConfig
from .outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

logger = logging.getLogger("xlmrxl")

__all__ = [
    "XLMRobertaXLPreTrainedModel",
    "XLMRobertaXLModel",
    "XLMRobertaXLForMaskedLM",
    "XLMRobertaXLForCausalLM",
    "XLMRobertaXLForSequenceClassification",
    "XLMRobertaXLForMultipleChoice",
    "XLMRobertaXLForTokenClassification",
    "XLMRobertaXLForQuestionAnswering",
    "create_position_ids_from_input_ids",
]


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------
def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATIONS = {
    "gelu": F.gelu,  # exact erf, as transformers' GELUActivation
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def _activation(name):
    if callable(name):
        return name
    if name not in _ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def create_position_ids_from_input_ids(
    input_ids: torch.Tensor, padding_idx: int, past_key_values_length: int = 0
) -> torch.Tensor:
    """fairseq ``make_positions``: real tokens get padding_idx+1+past, +2+past, ...; pad tokens get padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = (torch.cumsum(mask, dim=1).type_as(mask) + past_key_values_length) * mask
    return incremental_indices.long() + padding_idx


def _past_length(past_key_values) -> int:
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    if len(past_key_values) == 0 or past_key_values[0][0] is None:
        return 0
    return int(past_key_values[0][0].shape[-2])


def _cached_layer(cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one layer's K/V without appending: our ``Cache.get_layer`` or transformers' ``layers[i].keys``."""
    if hasattr(cache, "get_layer"):
        return cache.get_layer(layer_idx)
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def _expand_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int) -> torch.Tensor:
    """transformers' ``AttentionMaskConverter._expand_mask``: (B, K) -> (B, 1, tgt_len, K); 0 kept, finfo.min masked."""
    bsz, src_len = mask.shape
    expanded = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted = torch.tensor(1.0, dtype=dtype) - expanded
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


def _causal_sdpa_mask(mask2d: torch.Tensor, query_length: int, past: int, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``AttentionMaskConverter.to_4d`` (causal): padding and causal mask, (B, 1, S, P + S)."""
    device = mask2d.device
    expanded = _expand_mask(mask2d, dtype, query_length)
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


def _causal_eager_mask(mask2d: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
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


def _padding_eager_mask(mask2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' ``get_extended_attention_mask`` / ``invert_attention_mask`` for a 2D mask: (B, 1, 1, K)."""
    ext = mask2d[:, None, None, :].to(dtype=dtype)
    return (1.0 - ext) * torch.finfo(dtype).min


_SKIP_INIT = [False]


@contextlib.contextmanager
def _nested_model():
    """Build a sub-model (``self.roberta``) without initialising its weights; the outer ``post_init`` does it once."""
    prev = _SKIP_INIT[0]
    _SKIP_INIT[0] = True
    try:
        yield
    finally:
        _SKIP_INIT[0] = prev


# ---------------------------------------------------------------------------------------------------------------
# modules (names and layout as transformers 4.56.2)
# ---------------------------------------------------------------------------------------------------------------
class XLMRobertaXLEmbeddings(nn.Module):
    """word + token_type (+ absolute position) embeddings, then dropout. No LayerNorm, no buffers."""

    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        # registration order as transformers (state_dict order): word, position, token_type
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embedding_type = getattr(config, "position_embedding_type", "absolute")

    def create_position_ids_from_inputs_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        input_shape = inputs_embeds.size()[:-1]
        seq_len = input_shape[1]
        pos = torch.arange(
            self.padding_idx + 1, seq_len + self.padding_idx + 1, dtype=torch.long, device=inputs_embeds.device
        )
        return pos.unsqueeze(0).expand(input_shape)

    def forward(
        self,
        input_ids=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        past_key_values_length: int = 0,
    ):
        if position_ids is None and self.position_embedding_type == "absolute":
            if input_ids is not None:
                position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx, past_key_values_length)
            else:
                position_ids = self.create_position_ids_from_inputs_embeds(inputs_embeds)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            # all-zero token types: adding row 0 by broadcasting gives the same values as a gather of zeros
            token_type_embeddings = self.token_type_embeddings.weight[0]
        else:
            token_type_embeddings = self.token_type_embeddings(token_type_ids)
        embeddings = inputs_embeds + token_type_embeddings
        if self.position_embedding_type == "absolute":
            embeddings += self.position_embeddings(position_ids)
        return self.dropout(embeddings)


class XLMRobertaXLSelfAttention(nn.Module):
    """q/k/v projections and attention (SDPA or eager maths, as transformers 4.56.2 chooses)."""

    def __init__(
        self, config: XLMRobertaXLConfig, position_embedding_type: str | None = None, layer_idx: int | None = None
    ):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) is not a multiple of num_attention_heads "
                f"({config.num_attention_heads})"
            )
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.position_embedding_type = position_embedding_type or getattr(config, "position_embedding_type", "absolute")
        if self.position_embedding_type in ("relative_key", "relative_key_query"):
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.attention_head_size)
        self.is_decoder = config.is_decoder
        self.layer_idx = layer_idx

    def _split(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        return x.view(batch, -1, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        past_key_values=None,
        output_attentions=False,
        cache_position=None,
    ):
        batch, seq_len, _ = hidden_states.shape
        query = self._split(self.query(hidden_states), batch)

        is_cross = encoder_hidden_states is not None
        cache, root, is_updated = None, past_key_values, False
        if past_key_values is not None:
            if hasattr(past_key_values, "self_attention_cache"):  # EncoderDecoderCache, ours or transformers'
                is_updated = bool(past_key_values.is_updated.get(self.layer_idx))
                cache = past_key_values.cross_attention_cache if is_cross else past_key_values.self_attention_cache
            elif not is_cross:  # a plain cache holds self-attention K/V only; cross K/V are then recomputed
                cache = past_key_values

        current = encoder_hidden_states if is_cross else hidden_states
        if is_cross and cache is not None and is_updated:
            key, value = _cached_layer(cache, self.layer_idx)
        else:
            key = self._split(self.key(current), batch)
            value = self._split(self.value(current), batch)
            if cache is not None:
                key, value = cache.update(
                    key, value, self.layer_idx, {"cache_position": None if is_cross else cache_position}
                )
                if is_cross:
                    root.is_updated[self.layer_idx] = True

        use_sdpa = (
            getattr(self.config, "attn_implementation", "sdpa") == "sdpa"
            and self.position_embedding_type == "absolute"
            and not output_attentions
            and head_mask is None
        )
        if use_sdpa:
            is_causal = self.is_decoder and not is_cross and attention_mask is None and seq_len > 1
            context = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=self.dropout_prob if self.training else 0.0,
                is_causal=is_causal,
            )
            context = context.transpose(1, 2).reshape(batch, seq_len, self.all_head_size)
            return context, None

        scores = torch.matmul(query, key.transpose(-1, -2))
        if self.position_embedding_type in ("relative_key", "relative_key_query"):
            q_len, k_len = query.shape[2], key.shape[2]
            device = hidden_states.device
            if past_key_values is not None:  # 4.56.2: every query sits at the last key position once a cache exists
                pos_l = torch.tensor(k_len - 1, dtype=torch.long, device=device).view(-1, 1)
            else:
                pos_l = torch.arange(q_len, dtype=torch.long, device=device).view(-1, 1)
            pos_r = torch.arange(k_len, dtype=torch.long, device=device).view(1, -1)
            emb = self.distance_embedding(pos_l - pos_r + self.max_position_embeddings - 1).to(dtype=query.dtype)
            if self.position_embedding_type == "relative_key":
                scores = scores + torch.einsum("bhld,lrd->bhlr", query, emb)
            else:
                scores = scores + torch.einsum("bhld,lrd->bhlr", query, emb) + torch.einsum("bhrd,lrd->bhlr", key, emb)
        scores = scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            scores = scores + attention_mask
            if scores.dtype == torch.float16:
                # score + finfo.min can round to -inf in fp16; a fully masked row would then softmax to NaN
                scores = scores.clamp_min(torch.finfo(torch.float16).min)
        probs = F.softmax(scores, dim=-1)
        probs = self.dropout(probs)
        if head_mask is not None:
            probs = probs * head_mask
        context = torch.matmul(probs, value)
        context = context.permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (self.all_head_size,))
        return context, probs


class XLMRobertaXLSelfOutput(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states)) + input_tensor


class XLMRobertaXLAttention(nn.Module):
    """Pre-LN attention block: LN -> self-attention -> dense -> dropout -> + residual."""

    def __init__(
        self, config: XLMRobertaXLConfig, position_embedding_type: str | None = None, layer_idx: int | None = None
    ):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = XLMRobertaXLSelfAttention(
            config, position_embedding_type=position_embedding_type, layer_idx=layer_idx
        )
        self.output = XLMRobertaXLSelfOutput(config)
        self.pruned_heads = set()

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        past_key_values=None,
        output_attentions=False,
        cache_position=None,
    ):
        intermediate = self.self_attn_layer_norm(hidden_states)
        self_outputs = self.self(
            intermediate,
            attention_mask,
            head_mask,
            encoder_hidden_states,
            past_key_values,
            output_attentions,
            cache_position,
        )
        attention_output = self.output(self_outputs[0], hidden_states)
        return (attention_output,) + self_outputs[1:]


class XLMRobertaXLIntermediate(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class XLMRobertaXLOutput(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states, input_tensor):
        return self.dense(hidden_states) + input_tensor


class XLMRobertaXLLayer(nn.Module):
    """attention (+ cross-attention in decoders) then the pre-LN feed-forward block."""

    def __init__(self, config: XLMRobertaXLConfig, layer_idx: int | None = None):
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1
        self.attention = XLMRobertaXLAttention(config, layer_idx=layer_idx)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            if not self.is_decoder:
                raise ValueError(
                    "add_cross_attention=True needs is_decoder=True (cross-attention is a decoder "
                    "feature); set config.is_decoder=True"
                )
            self.crossattention = XLMRobertaXLAttention(config, position_embedding_type="absolute", layer_idx=layer_idx)
        self.intermediate = XLMRobertaXLIntermediate(config)
        self.output = XLMRobertaXLOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        output_attentions=False,
        cache_position=None,
    ):
        self_outputs = self.attention(
            hidden_states,
            attention_mask=attention_mask,
            head_mask=head_mask,
            output_attentions=output_attentions,
            past_key_values=past_key_values,
            cache_position=cache_position,
        )
        attention_output = self_outputs[0]
        outputs = self_outputs[1:]
        if self.is_decoder and encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError(
                    "encoder_hidden_states were passed but the model has no cross-attention layers; "
                    "build it with config.add_cross_attention=True"
                )
            cross_outputs = self.crossattention(
                attention_output,
                attention_mask=encoder_attention_mask,
                head_mask=head_mask,
                encoder_hidden_states=encoder_hidden_states,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
                cache_position=cache_position,
            )
            attention_output = cross_outputs[0]
            outputs = outputs + cross_outputs[1:]
        if self.chunk_size_feed_forward > 0:
            chunks = attention_output.split(self.chunk_size_feed_forward, dim=self.seq_len_dim)
            layer_output = torch.cat([self.feed_forward_chunk(c) for c in chunks], dim=self.seq_len_dim)
        else:
            layer_output = self.feed_forward_chunk(attention_output)
        return (layer_output,) + outputs

    def feed_forward_chunk(self, attention_output):
        intermediate = self.intermediate(self.LayerNorm(attention_output))
        return self.output(intermediate, attention_output)


class XLMRobertaXLEncoder(nn.Module):
    """The layer stack and the final LayerNorm. Takes the **2D** (B, K) attention mask and builds the masks the
    attention layers need; asks ``xlmrxl.fast_path`` first."""

    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([XLMRobertaXLLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.backend = Backend()

    def _head_mask(self, head_mask, dtype):
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
        hidden_states,
        attention_mask,
        encoder_hidden_states,
        encoder_attention_mask,
        past_length,
        sdpa_masks,
        mask_is_full,
        encoder_mask_is_full,
    ):
        """The additive self- and cross-attention masks exactly as 4.56.2's XLMRobertaXLModel.forward builds them
        (None where they are all zeros: adding zeros changes nothing)."""
        batch, seq_len = hidden_states.shape[:2]
        dtype, device = hidden_states.dtype, hidden_states.device
        if attention_mask is not None and mask_is_full is None:
            mask_is_full = bool(torch.all(attention_mask == 1))
        full = attention_mask is None or mask_is_full
        if not self.config.is_decoder:
            if full:
                self_mask = None
            elif sdpa_masks:
                self_mask = _expand_mask(attention_mask, dtype, seq_len)
            else:
                self_mask = _padding_eager_mask(attention_mask, dtype)
        else:
            mask2d = attention_mask
            if mask2d is None:
                mask2d = torch.ones((batch, seq_len + past_length), device=device)
            if sdpa_masks:
                self_mask = (
                    None
                    if full and (seq_len == 1 or past_length == 0)
                    else _causal_sdpa_mask(mask2d, seq_len, past_length, dtype)
                )
            else:
                self_mask = _causal_eager_mask(mask2d, seq_len, dtype)

        cross_mask = None
        if self.config.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            if encoder_mask_is_full is None:
                encoder_mask_is_full = bool(torch.all(encoder_attention_mask == 1))
            if not encoder_mask_is_full:
                cross_mask = (
                    _expand_mask(encoder_attention_mask, dtype, seq_len)
                    if sdpa_masks
                    else _padding_eager_mask(encoder_attention_mask, dtype)
                )
        return self_mask, cross_mask

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        cache_position=None,
        *,
        mask_is_full: bool | None = None,
        encoder_mask_is_full: bool | None = None,
    ):
        from . import fast_path

        causal = bool(self.config.is_decoder)
        reason = fast_path.unsupported_reason(
            self,
            attention_mask=attention_mask,
            head_mask=head_mask,
            output_attentions=output_attentions,
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=past_key_values,
            use_cache=use_cache,
            training=self.training,
            causal=causal,
            hidden_states=hidden_states,
            allow_cache=True,
        )
        cached = causal and (past_key_values is not None or bool(use_cache))
        if reason is None and not cached:  # (a reason is logged once by fast_path itself)
            # an all-ones mask (known from the model's validation sync) is dropped: no packing, no second sync
            mask2d = None if mask_is_full else attention_mask
            last, all_hidden = fast_path.encoder_forward(
                self,
                hidden_states,
                mask2d,
                self.backend,
                output_hidden_states=bool(output_hidden_states),
                causal=causal,
            )
            if not return_dict:
                return tuple(v for v in (last, all_hidden) if v is not None)
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=last, hidden_states=all_hidden)

        # the cache as the exact path uses and returns it (legacy tuples converted, one created for use_cache)
        if isinstance(past_key_values, (tuple, list)):
            past_key_values = EncoderDecoderCache.from_legacy_cache(past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())

        if reason is None:  # cached causal self-attention: fused decoder step (prefill or new tokens)
            # an all-ones mask (known from the model's validation sync) is dropped: no masking work per layer
            mask2d = None if mask_is_full else attention_mask
            self_cache = getattr(past_key_values, "self_attention_cache", past_key_values)
            last, all_hidden = fast_path.decoder_forward(
                self,
                hidden_states,
                mask2d,
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

        past_length = _past_length(past_key_values)

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


class XLMRobertaXLPooler(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class XLMRobertaXLLMHead(nn.Module):
    """dense -> exact GELU -> LayerNorm -> decoder (H -> V); ``decoder.bias`` is the same Parameter as ``bias``."""

    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, features, **kwargs):
        x = F.gelu(self.dense(features))
        x = self.layer_norm(x)
        return self.decoder(x)

    def _tie_weights(self) -> None:
        if self.decoder.bias.device.type == "meta":
            self.decoder.bias = self.bias
        else:
            self.bias = self.decoder.bias


class XLMRobertaXLClassificationHead(nn.Module):
    """<s> token -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, config: XLMRobertaXLConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features, **kwargs):
        x = self.dropout(features[:, 0, :])
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


# ---------------------------------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------------------------------
class XLMRobertaXLPreTrainedModel(nn.Module):
    """Common base: config handling, weight init and tying, backend selection, loading and saving."""

    config_class = XLMRobertaXLConfig
    base_model_prefix = "roberta"
    main_input_name = "input_ids"
    _no_split_modules = ["XLMRobertaXLEmbeddings", "XLMRobertaXLLayer"]
    _tied_weights_keys: dict[str, str] | None = None

    def __init__(self, config, *args, **kwargs):
        super().__init__()
        if isinstance(config, dict):
            config = XLMRobertaXLConfig.from_dict(config)
        elif not isinstance(config, XLMRobertaXLConfig):
            if hasattr(config, "to_dict"):  # e.g. a transformers XLMRobertaXLConfig
                config = XLMRobertaXLConfig.from_dict(config.to_dict())
            else:
                raise TypeError(f"config must be an XLMRobertaXLConfig (or its dict), got {type(config).__name__}")
        self.config = config
        self.backend = Backend()

    # -- init / tying -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range) for Linear/Embedding, zero biases and padding rows,
        LayerNorm 1/0, LM-head bias 0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.zero_()
            module.weight.fill_(1.0)
        elif isinstance(module, XLMRobertaXLLMHead):
            module.bias.zero_()

    def post_init(self) -> None:
        """Initialise weights (unless this is a sub-model being built by a head), tie them, share the backend."""
        if not _SKIP_INIT[0]:
            self.apply(self._init_weights)
        self.tie_weights()
        self.set_backend(self.backend)

    init_weights = post_init

    def tied_weights_map(self) -> dict[str, str]:
        """The aliases in effect for this model: ``{alias key: source key}`` (the decoder weight only when
        ``config.tie_word_embeddings``; the decoder bias always, as in transformers 4.56.2)."""
        keys = dict(self._tied_weights_keys or {})
        if not self.config.tie_word_embeddings:
            keys.pop("lm_head.decoder.weight", None)
        return keys

    def tie_weights(self) -> None:
        out = self.get_output_embeddings()
        if out is not None and self.config.tie_word_embeddings:
            out.weight = self.get_input_embeddings().weight
        for module in self.modules():
            if isinstance(module, XLMRobertaXLLMHead):
                module._tie_weights()

    def get_input_embeddings(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        getattr(self, self.base_model_prefix, self).set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        raise AttributeError(f"{type(self).__name__} has no output embeddings")

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        first = None
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
            first = first or p.dtype
        return first or torch.get_default_dtype()

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied ones counted once); ``exclude_embeddings`` drops the nn.Embedding tables."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    # -- backend ------------------------------------------------------------------------------------------------
    def set_backend(self, name: str | Backend | None = None) -> XLMRobertaXLPreTrainedModel:
        """Use ``Backend(name)`` (``"auto"``, ``"triton"``, ``"reference"``) for every part of the model."""
        backend = name if isinstance(name, Backend) else Backend(name)
        for module in self.modules():
            if isinstance(module, (XLMRobertaXLPreTrainedModel, XLMRobertaXLEncoder)) or getattr(
                module, "uses_backend", False
            ):  # e.g. xlmrxl.quantization.QuantLinear
                module.backend = backend
        return self

    # -- IO -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        dtype=None,
        device=None,
        backend="auto",
        quantization=None,
        output_loading_info=False,
        progress=None,
        **config_overrides,
    ):
        """Load a checkpoint directory (transformers' or ours); see ``xlmrxl.checkpoint.load_pretrained``."""
        from .checkpoint import load_pretrained

        torch_dtype = config_overrides.pop("torch_dtype", None)
        if dtype is None:
            dtype = torch_dtype
        elif torch_dtype is not None and torch_dtype != dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass only dtype=")
        return load_pretrained(
            cls,
            pretrained_model_name_or_path,
            dtype=dtype,
            device=device,
            backend=backend,
            quantization=quantization,
            output_loading_info=output_loading_info,
            progress=progress,
            **config_overrides,
        )

    def save_pretrained(self, save_directory, *, max_shard_size="50GB", safe_serialization=True):
        """Write config.json and safetensors weights loadable by transformers; see ``xlmrxl.checkpoint``."""
        from .checkpoint import save_pretrained

        return save_pretrained(
            self, save_directory, max_shard_size=max_shard_size, safe_serialization=safe_serialization
        )

    def to_transformers(self):
        """The equivalent transformers model (same weights); see ``xlmrxl.accelerate.to_transformers``."""
        from .accelerate import to_transformers

        return to_transformers(self)

    # -- shared forward helpers ---------------------------------------------------------------------------------
    def _flags(self, output_attentions, output_hidden_states, return_dict):
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.use_return_dict if return_dict is None else return_dict,
        )


# ---------------------------------------------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------------------------------------------
class XLMRobertaXLModel(XLMRobertaXLPreTrainedModel):
    """Embeddings + encoder (+ pooler when ``add_pooling_layer``)."""

    def __init__(self, config, add_pooling_layer: bool = True):
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
        input_ids,
        inputs_embeds,
        attention_mask,
        token_type_ids,
        position_ids,
        encoder_hidden_states,
        encoder_attention_mask,
        past_length,
    ):
        """Check the inputs; returns (mask_is_full, encoder_mask_is_full) from the same single device sync."""
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

        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None, None
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
        count_rows = absolute and position_ids is None and input_ids is not None and limit is not None
        parts = [torch.stack(flags)]
        if count_rows:
            parts.append((input_ids != c.pad_token_id).sum(dim=1) + past_length)
        values = torch.cat(parts).tolist()
        bad_ids, bad_tt, bad_pos, mask_full, enc_full, has_pad = values[:6]

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
            for row, n in enumerate(values[6:]):
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
        return bool(mask_full), bool(enc_full)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
    ):
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        if self.config.is_decoder:
            use_cache = self.config.use_cache if use_cache is None else use_cache
        else:
            use_cache = False

        past_length = _past_length(past_key_values)
        mask_full, enc_full = self._validate(
            input_ids,
            inputs_embeds,
            attention_mask,
            token_type_ids,
            position_ids,
            encoder_hidden_states,
            encoder_attention_mask,
            past_length,
        )
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
        )
        sequence_output = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None

        if not return_dict:
            return (sequence_output, pooled_output) + encoder_outputs.to_tuple()[1:]
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            past_key_values=encoder_outputs.past_key_values,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
            cross_attentions=encoder_outputs.cross_attentions,
        )

    def forward_packed(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=False,
    ):
        """Padding-free outputs: the final hidden states of the **real tokens only**, never scattered back.

        Returns ``xlmrxl.fast_path.PackedEncoderOutput`` with ``last_hidden_state`` ``(T, H)`` (T = number of real
        tokens, row-major over the batch), ``hidden_states`` (packed too, when asked) and ``packing``:
        ``packing.cu_seqlens`` (int32, B+1) delimits each sequence's rows, ``packing.unpack(x)`` restores
        ``(B, S, ...)`` with zeros at padding. For serving embeddings without paying for padding.
        Raises ValueError when the call cannot take the fused path (e.g. autograd recording), saying why."""
        from . import fast_path

        mask_full, _ = self._validate(
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, None, None, 0
        )
        embedding_output = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        causal = bool(self.config.is_decoder)
        reason = fast_path.unsupported_reason(
            self.encoder,
            attention_mask=attention_mask,
            training=self.training,
            causal=causal,
            hidden_states=embedding_output,
        )
        if reason is not None:
            raise ValueError(
                f"forward_packed runs only on the fused padding-free path, which this call cannot take: {reason}"
            )
        return fast_path.encoder_forward(
            self.encoder,
            embedding_output,
            None if mask_full else attention_mask,
            self.backend,
            output_hidden_states=bool(output_hidden_states),
            return_packed=True,
            causal=causal,
        )


# ---------------------------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------------------------
_LM_TIED = {
    "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
    "lm_head.decoder.bias": "lm_head.bias",
}


class _LMHeadModel(XLMRobertaXLPreTrainedModel):
    _tied_weights_keys = dict(_LM_TIED)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head.decoder = new_embeddings
        self.lm_head.bias = new_embeddings.bias


class XLMRobertaXLForMaskedLM(_LMHeadModel):
    """Backbone (no pooler) + LM head; CrossEntropy loss on ``labels`` (-100 ignored)."""

    def __init__(self, config):
        super().__init__(config)
        if self.config.is_decoder:
            logger.warning(
                "XLMRobertaXLForMaskedLM with config.is_decoder=True uses causal attention; set "
                "is_decoder=False for bi-directional self-attention"
            )
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.lm_head = XLMRobertaXLLMHead(self.config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
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
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        if not return_dict:
            out = (logits,) + _tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _tail(outputs: BaseModelOutputWithPoolingAndCrossAttentions) -> tuple:
    """What transformers' heads append after their logits in tuple mode: the backbone tuple's ``[2:]``, i.e. the
    non-None of (past_key_values, hidden_states, attentions, cross_attentions), in that order."""
    return tuple(
        v
        for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions, outputs.cross_attentions)
        if v is not None
    )


class XLMRobertaXLForCausalLM(_LMHeadModel):
    """Decoder backbone (no pooler) + LM head; shifted next-token loss; ``generate`` via ``xlmrxl.generation``."""

    def __init__(self, config):
        super().__init__(config)
        if not self.config.is_decoder:
            logger.warning(
                "XLMRobertaXLForCausalLM is meant to be a decoder: set config.is_decoder=True for causal attention"
            )
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.lm_head = XLMRobertaXLLMHead(self.config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int | torch.Tensor = 0,
        cache_position=None,
        **kwargs,
    ):
        """``logits_to_keep`` (an xlmrxl extension; transformers 4.56.2 ignores it here): 0 = logits for every
        position; n > 0 = only the last n positions; a 1D tensor = those positions. ``cache_position`` is handed to
        ``cache.update`` in ``cache_kwargs``. Other ``kwargs`` go to the loss (``num_items_in_batch``,
        ``ignore_index``, ``shift_labels``), as in transformers."""
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
            out = (logits,) + _tail(outputs)
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

    def generate(self, *args, **kwargs):
        """Autoregressive generation; see ``xlmrxl.generation.generate``."""
        from .generation import generate

        return generate(self, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **model_kwargs):
        """As transformers 4.56.2: positions from pad ids (padding_idx rule), only the uncached suffix is fed."""
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape)
        position_ids = None
        if model_kwargs.get("position_ids") is None:
            position_ids = create_position_ids_from_input_ids(input_ids, padding_idx=self.config.pad_token_id)
        if past_key_values is not None:
            past = _past_length(past_key_values)
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
    def _reorder_cache(past_key_values, beam_idx):
        if hasattr(past_key_values, "reorder_cache"):
            past_key_values.reorder_cache(beam_idx)
            return past_key_values
        return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past_key_values)


def _causal_lm_loss(
    logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **kwargs
):
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


class XLMRobertaXLForSequenceClassification(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + classification head on <s>; MSE / CE / BCE by ``problem_type`` (inferred if None)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.classifier = XLMRobertaXLClassificationHead(self.config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = _sequence_classification_loss(self.config, self.num_labels, logits, labels)
        if not return_dict:
            out = (logits,) + _tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _sequence_classification_loss(config, num_labels, logits, labels):
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and (labels.dtype == torch.long or labels.dtype == torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze())
        return MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels)


class XLMRobertaXLForMultipleChoice(XLMRobertaXLPreTrainedModel):
    """Backbone with pooler, per choice; (B, C, S) inputs are flattened to (B*C, S); logits (B, C)."""

    def __init__(self, config):
        super().__init__(config)
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config)
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        token_type_ids=None,
        attention_mask=None,
        labels=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(t):
            return t.reshape(-1, t.size(-1)) if t is not None else None

        flat_embeds = (
            inputs_embeds.reshape(-1, inputs_embeds.size(-2), inputs_embeds.size(-1))
            if inputs_embeds is not None
            else None
        )
        outputs = self.roberta(
            flat(input_ids),
            position_ids=flat(position_ids),
            token_type_ids=flat(token_type_ids),
            attention_mask=flat(attention_mask),
            head_mask=head_mask,
            inputs_embeds=flat_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        reshaped = logits.view(-1, num_choices)
        loss = CrossEntropyLoss()(reshaped, labels) if labels is not None else None
        if not return_dict:
            out = (reshaped,) + _tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return MultipleChoiceModelOutput(
            loss=loss, logits=reshaped, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XLMRobertaXLForTokenClassification(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + dropout + linear per token; CE loss ignoring positions where attention_mask != 1."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        c = self.config
        self.dropout = nn.Dropout(c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob)
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss_fct = CrossEntropyLoss()
            if attention_mask is not None:
                active = attention_mask.view(-1) == 1
                active_labels = torch.where(
                    active, labels.view(-1), torch.tensor(loss_fct.ignore_index).type_as(labels)
                )
                loss = loss_fct(logits.view(-1, self.num_labels), active_labels)
            else:
                loss = loss_fct(logits.view(-1, self.num_labels), labels.view(-1))
        if not return_dict:
            out = (logits,) + _tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XLMRobertaXLForQuestionAnswering(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + ``qa_outputs`` (start/end logits); loss = mean of start and end CE."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with _nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        total_loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss_fct = CrossEntropyLoss(ignore_index=ignored)
            total_loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
        if not return_dict:
            out = (start_logits, end_logits) + _tail(outputs)
            return ((total_loss,) + out) if total_loss is not None else out
        return QuestionAnsweringModelOutput(
            loss=total_loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
