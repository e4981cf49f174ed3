"""Fast encoder path: padding-free, fused execution of the XLM-RoBERTa-XL layer stack (kernel or reference ops).

Contract with the model layer (``xlmrxl.modeling``), which calls, at the top of its encoder's forward:

    reason = fast_path.unsupported_reason(encoder, attention_mask=..., head_mask=..., output_attentions=...,
                                          encoder_hidden_states=..., past_key_values=..., use_cache=...)
    if reason is None:
        last_hidden_state, all_hidden_states = fast_path.encoder_forward(
            encoder, hidden_states, attention_mask, backend, output_hidden_states=...)

``encoder`` is any module laid out like transformers' ``XLMRobertaXLEncoder`` (``encoder.layer[i].attention.self.query``,
..., ``encoder.LayerNorm``): ours or transformers' own, which is how ``xlmrxl.accelerate`` reuses this file.
``hidden_states`` is the embeddings output (B, S, H); ``attention_mask`` the 2D (B, S) mask (1 = real) or None.
It returns ``last_hidden_state`` (B, S, H) after the final LayerNorm (padded positions are zeros) and, when asked,
the tuple of hidden states with transformers' semantics; otherwise None.
"""
from __future__ import annotations

from typing import Optional


def unsupported_reason(encoder, **call) -> Optional[str]:
    """None when this call can take the fast path, else a one-line reason (logged once by the caller)."""
    return "the fast path is not built yet"


def encoder_forward(encoder, hidden_states, attention_mask, backend, *, output_hidden_states=False):
    raise NotImplementedError("the fast path is not built yet")
