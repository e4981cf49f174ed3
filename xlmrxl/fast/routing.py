"""The route: the one decision, per call, of how an encoder runs (packed, cached or exact), and every reason why not.

    r = route(encoder, Call(hidden_states=h, attention_mask=mask2d, past_key_values=cache, use_cache=True, ...))
    r.path            # "packed" (padding-free, xlmrxl.fast.stack.encoder_forward), "cached" (decoder_forward), "exact"
    r.not_supported   # {"packed": (Reason, ...), "cached": (Reason, ...)}: every reason each fused path was not taken
    r.reasons         # the reasons for the fused path this call is shaped for (a cached call: "cached"), () if taken
    r.mask, r.causal  # what the fused runners take: the 2D keep mask (None: every key real), causal attention

As xformers' dispatch, each fused path lists its ``not_supported`` reasons and the first path with none runs; else the
exact path runs and ``route`` logs the reasons once (INFO; WARNING when autograd recording is among them, since a
forgotten ``no_grad()`` silently costs the whole speed-up). Its callers (our encoder's forward, ``forward_packed``,
the transformers patch in ``xlmrxl.hf``) only obey: no second opinion, no switch that turns a check off.

``encoder`` is any module laid out like transformers' ``XLMRobertaXLEncoder`` (ours or transformers' own). The
structural checks (``xlmrxl.fast.structure``) are cached on it until a checked module or weight is replaced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import torch
import torch.nn as nn

from ..backend import log_once
from ..reasons import (
    ATTENTION_MASK,
    AUTOGRAD,
    CACHE,
    CALLER,
    CROSS_ATTENTION,
    DEVICE_HOOKS,
    HEAD_MASK,
    HOOKS,
    KV_CACHE,
    NO_KV_CACHE,
    OUTPUT_ATTENTIONS,
    PADDED_LOSS,
    TRACING,
    TRAINING,
    Reason,
    describe,
)
from .structure import VERSION, structure_not_supported

__all__ = ["PACKED", "CACHED", "EXACT", "Call", "Route", "route", "is_causal"]

PACKED, CACHED, EXACT = "packed", "cached", "exact"

# transformers 5.x installs these on layers once hidden states are first requested; they are inert unless a
# collection is active, which the transformers patch reports as a caller reason.
_IGNORED_HOOK_NAMES = ("output_capturing_hook",)


@dataclass(frozen=True, kw_only=True)
class Call:
    """What the route needs to know about one encoder call (keyword-only: a misspelled field is a TypeError).

    ``attention_mask``: the 2D ``(batch, past + seq)`` keep mask (bool or 0/1), or None when every key is real.
    ``mask_is_full``: already known (from the model's validation sync) that the mask is all ones; None: unknown.
    ``causal``: decoder self-attention; None reads ``encoder.config.is_decoder`` now (a later change is seen).
    ``padded_loss``: the loss of this call reads padded positions, which the packed path never computes (what, in
    words); it matters only when the mask is not known to be all ones.
    ``caller_reasons``: facts the caller established that rule out the fused paths (the transformers patch: the 2D
    mask could not be read back, transformers is capturing layer outputs with hooks)."""

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None = None
    mask_is_full: bool | None = None
    head_mask: Any = None
    output_attentions: bool = False
    encoder_hidden_states: torch.Tensor | None = None
    past_key_values: Any = None
    use_cache: bool = False
    causal: bool | None = None
    padded_loss: str | None = None
    caller_reasons: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Route:
    """How one call runs: ``path`` in (``PACKED``, ``CACHED``, ``EXACT``) and why not faster (see the module doc)."""

    path: str
    causal: bool
    mask: torch.Tensor | None
    not_supported: dict[str, tuple[Reason, ...]]
    wanted: str  # the fused path this call is shaped for: CACHED with a KV cache, else PACKED

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return self.not_supported[self.wanted]


def is_causal(encoder: nn.Module) -> bool:
    """Decoder self-attention? ``encoder.config.is_decoder`` (read per call), else ``encoder.layer[0].is_decoder``."""
    cfg = getattr(encoder, "config", None)
    if cfg is not None:
        return bool(getattr(cfg, "is_decoder", False))
    return bool(getattr(encoder.layer[0], "is_decoder", False))


def route(encoder: nn.Module, call: Call) -> Route:
    """Decide how ``call`` runs on ``encoder``; log the reasons once when it runs the exact path."""
    causal = is_causal(encoder) if call.causal is None else bool(call.causal)
    cached_call = call.past_key_values is not None or bool(call.use_cache)
    if torch.compiler.is_compiling():
        # torch.compile / torch.export trace this function: answer with constants built outside the graph (no
        # Reason is constructed and nothing is logged inside it); the exact path compiles to one graph
        wanted = CACHED if cached_call else PACKED
        return Route(EXACT, causal, call.attention_mask, _COMPILING, wanted)
    common = _common_not_supported(encoder, call)
    packed = list(common)
    cached = list(common)
    if cached_call:
        packed.append(Reason(KV_CACHE, "a KV cache (past_key_values / use_cache) is in use"))
        cached.extend(_cache_not_supported(call, causal))
    else:
        cached.append(_NO_CACHE)
        packed.extend(_mask_not_supported(call.attention_mask, call.hidden_states, 0))
    path = PACKED if not packed else CACHED if not cached else EXACT
    mask = None if call.attention_mask is None or call.mask_is_full else call.attention_mask
    r = Route(path, causal, mask, {PACKED: tuple(packed), CACHED: tuple(cached)}, CACHED if cached_call else PACKED)
    if path == EXACT:
        level = logging.WARNING if any(x.code == AUTOGRAD for x in r.reasons) else logging.INFO
        log_once(f"xlmrxl: the encoder runs the exact (unfused) path: {describe(r.reasons)}", level)
    return r


_NO_CACHE = Reason(NO_KV_CACHE, "no KV cache in this call (past_key_values / use_cache)")
_COMPILING = {
    p: (
        Reason(
            TRACING, "torch.compile / torch.export is recording the call (the fused path reads lengths on the host)"
        ),
    )
    for p in (PACKED, CACHED)
}


def _common_not_supported(encoder: nn.Module, call: Call) -> list[Reason]:
    """The reasons that rule out both fused paths."""
    out = []
    if torch.jit.is_tracing():
        # packing reads the per-row lengths on the host: a traced graph would bake this batch's padding into the
        # graph, wrong for the next batch (torch.compile / torch.export: see route)
        out.append(Reason(TRACING, "torch.jit.trace is recording the call (the fused path reads lengths on the host)"))
    if call.output_attentions:
        out.append(
            Reason(
                OUTPUT_ATTENTIONS,
                "output_attentions=True needs the attention probabilities, which the fused attention never forms",
            )
        )
    hm = call.head_mask
    if hm is not None and not (isinstance(hm, (list, tuple)) and all(h is None for h in hm)):
        out.append(Reason(HEAD_MASK, "head_mask is set (the fused attention has no per-head probability scaling)"))
    if call.encoder_hidden_states is not None:
        out.append(Reason(CROSS_ATTENTION, "cross-attention (encoder_hidden_states) is not fused"))
    if call.attention_mask is not None and call.attention_mask.dim() != 2:
        out.append(
            Reason(
                ATTENTION_MASK,
                f"attention_mask has {call.attention_mask.dim()} dims; the fast path takes the 2D (batch, seq) "
                "padding mask",
            )
        )
    out.extend(r if isinstance(r, Reason) else Reason(CALLER, r) for r in call.caller_reasons)
    if call.padded_loss and call.attention_mask is not None and not call.mask_is_full:
        out.append(Reason(PADDED_LOSS, f"{call.padded_loss} (the packed path never computes padded positions)"))
    out.extend(_mode_not_supported(encoder, call.hidden_states))
    st = encoder.__dict__.get("_xlmrxl_structure")  # (its cached pass, read here: one file fewer per call)
    if st is not None and st.version == VERSION[0]:
        reasons, modules = (), st.modules
    else:
        reasons, modules = structure_not_supported(encoder)
    out.extend(reasons)
    out.extend(_hooks_not_supported(encoder, modules))
    return out


def _mode_not_supported(encoder: nn.Module, hidden_states: torch.Tensor) -> list[Reason]:
    """Training with dropout, autograd recording."""
    out = []
    if encoder.training:
        p = next((m.p for m in encoder.modules() if isinstance(m, nn.Dropout) and m.p > 0), 0.0)
        layers = getattr(encoder, "layer", None)
        if not p and layers:
            p = getattr(getattr(getattr(layers[0], "attention", None), "self", None), "dropout_prob", 0.0)
        if p:
            out.append(Reason(TRAINING, f"training mode with dropout p={p} (call model.eval() for inference)"))
    if torch.is_grad_enabled():
        reason = _autograd_reason(encoder, hidden_states)
        if reason is not None:
            out.append(reason)
    return out


def _autograd_reason(encoder: nn.Module, hidden_states: torch.Tensor) -> Reason | None:
    """Grad mode is on: say what makes autograd record this call, the encoder's parameters or its input (None:
    nothing requires grad, so nothing is recorded)."""
    params = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if params:
        total = sum(1 for _ in encoder.parameters())
        also = (
            " (and the input hidden states given require grad)"
            if hidden_states.requires_grad and hidden_states.is_leaf
            else ""
        )
        return Reason(
            AUTOGRAD,
            f"autograd is recording: {len(params)} of the encoder's {total} parameters require grad (e.g. "
            f"{params[0]}){also}, and the fast path is inference-only; run under torch.inference_mode() / "
            "torch.no_grad(), or call model.requires_grad_(False)",
        )
    if hidden_states.requires_grad:
        return Reason(
            AUTOGRAD,
            "autograd is recording: the encoder's input hidden states require grad (inputs_embeds, or the "
            "embeddings' parameters, require grad; the encoder's own parameters do not), and the fast path is "
            "inference-only; run under torch.inference_mode() / torch.no_grad(), or detach the input",
        )
    return None


def _hooks_not_supported(encoder: nn.Module, modules: list[nn.Module]) -> list[Reason]:
    """Forward hooks the fused path would skip, and accelerate's device-alignment wrappers."""
    out = []
    g = nn.modules.module
    if getattr(g, "_global_forward_hooks", None) or getattr(g, "_global_forward_pre_hooks", None):
        out.append(Reason(HOOKS, "global module forward hooks are registered; the fused path would skip them"))
    st = encoder.__dict__.get("_xlmrxl_structure")
    if (
        not out
        and st is not None
        and st.modules is modules
        and not any(map(len, st.hook_dicts))
        and not any(map(dict.__contains__, st.dicts, repeat("_hf_hook")))
    ):
        return out  # the common case, scanned at C speed: no hook dict holds anything, nothing is wrapped
    for m in modules:
        if m is not encoder and (m._forward_hooks or m._forward_pre_hooks):
            hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
            if any(getattr(h, "__name__", "") not in _IGNORED_HOOK_NAMES for h in hooks):
                out.append(
                    Reason(
                        HOOKS,
                        f"{type(m).__name__} has forward hooks that the fused path would skip; remove them "
                        "to take the fast path",
                    )
                )
                break
    # accelerate's device_map / cpu_offload wrap module.forward with an AlignDevicesHook (attribute _hf_hook): the
    # fused path never calls those forwards, so it would skip the device moves and weight loading they do
    hooked = next((m for m in modules if "_hf_hook" in m.__dict__), None)
    if hooked is not None:
        out.append(
            Reason(
                DEVICE_HOOKS,
                f"{type(hooked).__name__}.forward is wrapped by accelerate's {type(hooked._hf_hook).__name__} "
                "(device_map / offloading), which the fused path would skip",
            )
        )
    return out


def _mask_not_supported(mask: torch.Tensor | None, hidden_states: torch.Tensor, past: int) -> list[Reason]:
    """A 2D mask must cover the call's keys: ``(batch, past + seq)``."""
    if mask is None or mask.dim() != 2:
        return []  # (other dims: a common reason)
    B, S = hidden_states.shape[:2]
    if tuple(mask.shape) != (B, past + S):
        extra = f" ({past} cached + {S} new)" if past else ""
        return [
            Reason(ATTENTION_MASK, f"attention_mask of shape {tuple(mask.shape)} for ({B}, {past + S}) keys{extra}")
        ]
    return []


def _cache_not_supported(call: Call, causal: bool) -> list[Reason]:
    """Can the fused decoder step drive this call's cache (and mask)?"""
    if not causal:
        return [
            Reason(CACHE, "a KV cache with bidirectional attention (is_decoder=False): only causal decoding is fused")
        ]
    pkv = call.past_key_values
    if pkv is None:  # use_cache without a cache: the caller creates one the fused step drives
        return _mask_not_supported(call.attention_mask, call.hidden_states, 0)
    cache = getattr(pkv, "self_attention_cache", pkv)
    if not (hasattr(cache, "update") and hasattr(cache, "get_seq_length")):
        return [Reason(CACHE, f"past_key_values of type {type(pkv).__name__} (legacy tuples run the exact path)")]
    if _is_preallocated(cache):
        # transformers' static caches write at `cache_position` and hand back the whole preallocated buffer; the
        # fused step drives growing caches (or xlmrxl.StaticCache) only
        return [
            Reason(
                CACHE,
                f"transformers' {type(cache).__name__} (preallocated) is not driven by the fused step; use "
                "DynamicCache or xlmrxl.StaticCache",
            )
        ]
    return _mask_not_supported(call.attention_mask, call.hidden_states, int(cache.get_seq_length()))


def _is_preallocated(cache: Any) -> bool:
    """A cache from outside xlmrxl that is not transformers' growing ``DynamicCache``."""
    if type(cache).__module__.startswith("xlmrxl"):
        return False
    try:
        from transformers.cache_utils import DynamicCache  # transformers is optional: only its caches need it
    except ImportError:
        return False
    return not isinstance(cache, DynamicCache)
