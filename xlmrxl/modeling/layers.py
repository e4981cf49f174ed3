"""Exact-path layers: the modules of transformers 4.56.2's XLM-RoBERTa-XL, with its names, layout and arithmetic.

Embeddings, self-attention (SDPA or eager maths, as 4.56.2 chooses), the pre-LN attention and feed-forward blocks,
the pooler and the LM / classification head modules. Models register no buffers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..caches.view import cached_layer
from ..config import XLMRobertaXLConfig


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


def _activation(name: str):
    if callable(name):
        return name
    if name not in _ACTIVATIONS:
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


# ---------------------------------------------------------------------------------------------------------------
# modules (names and layout as transformers 4.56.2)
# ---------------------------------------------------------------------------------------------------------------
class XLMRobertaXLEmbeddings(nn.Module):
    """word + token_type (+ absolute position) embeddings, then dropout. No LayerNorm, no buffers."""

    def __init__(self, config: XLMRobertaXLConfig) -> None:
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
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values_length: int = 0,
    ) -> torch.Tensor:
        if position_ids is None and self.position_embedding_type == "absolute":
            if self.padding_idx is None:
                raise ValueError(
                    "config.pad_token_id is None, but XLM-RoBERTa-XL counts its absolute position ids from the "
                    "padding id (pad_token_id + 1 + position); set pad_token_id in config.json (1 for the published "
                    "checkpoints) or pass position_ids"
                )
            if input_ids is not None:
                # xlmrxl.masks.create_position_ids_from_input_ids (fairseq's make_positions), inline
                real = input_ids.ne(self.padding_idx).int()
                position_ids = (torch.cumsum(real, dim=1).type_as(real) + past_key_values_length) * real
                position_ids = position_ids.long() + self.padding_idx
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
    ) -> None:
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
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Any = None,
        output_attentions: bool | None = False,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            key, value = cached_layer(cache, self.layer_idx)
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
    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states)) + input_tensor


class XLMRobertaXLAttention(nn.Module):
    """Pre-LN attention block: LN -> self-attention -> dense -> dropout -> + residual."""

    def __init__(
        self, config: XLMRobertaXLConfig, position_embedding_type: str | None = None, layer_idx: int | None = None
    ) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = XLMRobertaXLSelfAttention(
            config, position_embedding_type=position_embedding_type, layer_idx=layer_idx
        )
        self.output = XLMRobertaXLSelfOutput(config)
        self.pruned_heads = set()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Any = None,
        output_attentions: bool | None = False,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
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
    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class XLMRobertaXLOutput(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states) + input_tensor


class XLMRobertaXLLayer(nn.Module):
    """attention (+ cross-attention in decoders) then the pre-LN feed-forward block."""

    def __init__(self, config: XLMRobertaXLConfig, layer_idx: int | None = None) -> None:
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
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        output_attentions: bool | None = False,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
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

    def feed_forward_chunk(self, attention_output: torch.Tensor) -> torch.Tensor:
        intermediate = self.intermediate(self.LayerNorm(attention_output))
        return self.output(intermediate, attention_output)


class XLMRobertaXLPooler(nn.Module):
    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class XLMRobertaXLLMHead(nn.Module):
    """dense -> exact GELU -> LayerNorm -> decoder (H -> V); ``decoder.bias`` is the same Parameter as ``bias``."""

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
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

    def __init__(self, config: XLMRobertaXLConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features[:, 0, :])
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


# ---------------------------------------------------------------------------------------------------------------
# base class
