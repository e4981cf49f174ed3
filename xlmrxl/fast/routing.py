"""Whether a call can take the fused path, and why not (logged once).

Callers (our encoder, ``forward_packed``, the transformers patch in ``xlmrxl.hf``) ask ``unsupported_reason`` first
and run ``xlmrxl.fast.stack`` only when it returns None.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..backend import log_once
from .structure import structure

# transformers 5.x installs these on layers once hidden states are first requested; they are inert unless a
# collection is active, which the caller (xlmrxl.hf) checks itself.
_IGNORED_HOOK_NAMES = ("output_capturing_hook",)


# ---------------------------------------------------------------------------------------------------------------
# eligibility
# ---------------------------------------------------------------------------------------------------------------
def unsupported_reason(
    encoder,
    *,
    attention_mask=None,
    head_mask=None,
    output_attentions=False,
    encoder_hidden_states=None,
    past_key_values=None,
    use_cache=False,
    training=None,
    causal=False,
    hidden_states=None,
    allow_cache=False,
    **_ignored,
) -> str | None:
    """None when this call can take the fast path, else a one-line reason (logged once here, at INFO).

    ``allow_cache=True`` (a caller that runs ``decoder_forward`` for cached causal calls) accepts
    ``past_key_values`` / ``use_cache`` when ``causal``."""
    if allow_cache and causal:
        past_key_values, use_cache = None, False
    reason = _reason(
        encoder,
        attention_mask=attention_mask,
        head_mask=head_mask,
        output_attentions=output_attentions,
        encoder_hidden_states=encoder_hidden_states,
        past_key_values=past_key_values,
        use_cache=use_cache,
        training=training,
        hidden_states=hidden_states,
    )
    if reason is not None:
        # a forgotten no_grad() silently costs the whole speed-up: say so where users see it
        level = logging.WARNING if reason.startswith("autograd is recording") else logging.INFO
        log_once(f"xlmrxl: the encoder runs the exact (unfused) path: {reason}", level)
    return reason


def _reason(
    encoder,
    *,
    attention_mask,
    head_mask,
    output_attentions,
    encoder_hidden_states,
    past_key_values,
    use_cache,
    training,
    hidden_states,
) -> str | None:
    if output_attentions:
        return "output_attentions=True needs the attention probabilities, which the fused attention never forms"
    if head_mask is not None and not (isinstance(head_mask, (list, tuple)) and all(h is None for h in head_mask)):
        return "head_mask is set (the fused attention has no per-head probability scaling)"
    if encoder_hidden_states is not None:
        return "cross-attention (encoder_hidden_states) is not fused"
    if past_key_values is not None or use_cache:
        return "a KV cache (past_key_values / use_cache) is in use: decoding runs the exact path"
    if attention_mask is not None and attention_mask.dim() != 2:
        return f"attention_mask has {attention_mask.dim()} dims; the fast path takes the 2D (batch, seq) padding mask"
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        return f"{type(encoder).__name__} has no .layer list laid out like XLMRobertaXLEncoder"
    training = encoder.training if training is None else training
    if training:
        for m in encoder.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                return f"training mode with dropout p={m.p} (call model.eval() for inference)"
        p = getattr(layers[0].attention.self, "dropout_prob", 0.0)
        if p:
            return f"training mode with attention dropout p={p} (call model.eval() for inference)"
    if torch.is_grad_enabled():
        if hidden_states is not None and hidden_states.requires_grad:
            return (
                "autograd is recording (the inputs require grad) and the fast path is inference-only; "
                "run under torch.inference_mode() / torch.no_grad()"
            )
        if any(p.requires_grad for p in encoder.parameters()):
            return (
                "autograd is recording (grad mode on and parameters require grad) and the fast path is "
                "inference-only; run under torch.inference_mode() / torch.no_grad(), or call "
                "model.requires_grad_(False)"
            )
    g = nn.modules.module
    if getattr(g, "_global_forward_hooks", None) or getattr(g, "_global_forward_pre_hooks", None):
        return "global module forward hooks are registered; the fused path would skip them"
    reason, modules = structure(encoder)
    if reason is not None:
        return reason
    for m in modules:
        if m is not encoder and (m._forward_hooks or m._forward_pre_hooks):
            hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
            if any(getattr(h, "__name__", "") not in _IGNORED_HOOK_NAMES for h in hooks):
                return (
                    f"{type(m).__name__} has forward hooks that the fused path would skip; remove them "
                    "to take the fast path"
                )
    return None
